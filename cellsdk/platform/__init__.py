"""Facts about this machine, torch-free: what it is, not what to do about it.

* :mod:`~cellsdk.platform.cpu`: the CPU's features and class (CPUID, HWCAP), which decide int8 / bf16 kernels;
* :mod:`~cellsdk.platform.gpu`: the NVIDIA stack (driver, CUDA / cuDNN / TensorRT libraries, the ONNX Runtime
  build) and the first missing piece, in one line;
* :mod:`~cellsdk.platform.nvml`: GPU name, driver and memory through NVML (ctypes);
* :mod:`~cellsdk.platform.devices`: every runtime x device, ready or why not (``cellsdk devices``);
* :mod:`~cellsdk.platform.machine`: the machine a measurement ran on, for reports.

Examples:
    >>> from cellsdk.platform.cpu import CPU_CLASSES, host_cpu
    >>> host_cpu().cpu_class in CPU_CLASSES
    True
"""

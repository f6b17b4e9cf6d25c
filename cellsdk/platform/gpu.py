"""The NVIDIA GPU stack: what this machine has for ``cuda`` / ``tensorrt``, and one line on what is missing (torch-free).

A model runs on an NVIDIA GPU only when five things are all there, and each can
be missing on its own: the GPU build of the runtime (``onnxruntime-gpu``, a CUDA
build of PyTorch), the NVIDIA driver (``libcuda.so.1``), a GPU that driver can
see, a driver new enough for the CUDA version the runtime was built with, and
the CUDA / cuDNN (and for TensorRT, TensorRT's) libraries the runtime loads —
from a CUDA toolkit or from NVIDIA's pip packages (``nvidia-cublas`` …).
Left alone, ONNX Runtime prints a red log line and quietly runs on the CPU, and
PyTorch says only ``is_available() == False``. This module finds the first
missing piece and says, in one line, what to install; the backends raise it as
:class:`~cellsdk.errors.DeviceUnavailableError` when a GPU was asked for, and
pick the CPU without a word when the device was ``auto``.
``cellsdk devices`` prints the whole picture.

The versions cellsdk's ``cuda`` extra pins work together: onnxruntime-gpu
1.31 is built for CUDA 13.0 and cuDNN 9 (NVIDIA driver >= 580) and its TensorRT
provider for TensorRT 10 (``tensorrt-cu13`` 10.x; TensorRT 11 is a different
library, ``libnvinfer.so.11``, that it does not load).

Examples:
    >>> problem = driver_problem()
    >>> problem is None or "NVIDIA" in problem or "CUDA" in problem
    True
    >>> cuda_libraries(13)[:2]
    ('libcudart.so.13', 'libcublasLt.so.13')
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ONNXRUNTIME_GPU_VERSION", "TENSORRT_PACKAGE", "Driver", "cuda_libraries", "device_index", "driver_problem",
           "find_library", "gpu_device_kind", "gpu_identity", "load_libraries", "nvidia_driver", "onnxruntime_build",
           "onnxruntime_cuda_problem", "torch_cuda_problem"]

#: the onnxruntime-gpu release ``cellsdk[cuda]`` is tested with (CUDA 13.0, cuDNN 9, TensorRT 10)
ONNXRUNTIME_GPU_VERSION = "1.31.1"
#: the TensorRT that onnxruntime-gpu 1.31's TensorRT provider loads (libnvinfer.so.10, CUDA 13)
TENSORRT_PACKAGE = "tensorrt-cu13>=10.13,<11"
#: the oldest Linux driver for each CUDA major version (NVIDIA's CUDA toolkit release notes)
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
_CUDA_ERRORS = {3: "CUDA_ERROR_NOT_INITIALIZED", 35: "CUDA_ERROR_INSUFFICIENT_DRIVER", 100: "CUDA_ERROR_NO_DEVICE",
                101: "CUDA_ERROR_INVALID_DEVICE", 304: "CUDA_ERROR_OPERATING_SYSTEM", 999: "CUDA_ERROR_UNKNOWN",
                804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"}
_FALLBACK = "or use device 'cpu'"


def cuda_libraries(major: int) -> tuple[str, ...]:
    """The CUDA and cuDNN libraries a CUDA ``major`` build of ONNX Runtime loads, in load order.

    Examples:
        >>> cuda_libraries(13)[0]
        'libcudart.so.13'
    """
    fft = {12: "libcufft.so.11", 13: "libcufft.so.12"}.get(major, f"libcufft.so.{major - 1}")
    return (f"libcudart.so.{major}", f"libcublasLt.so.{major}", f"libcublas.so.{major}", "libcurand.so.10", fft,
            "libcudnn.so.9")


@dataclass(frozen=True)
class Driver:
    """The NVIDIA driver as this process sees it.

    Attributes:
        version: the kernel module's version (e.g. ``580.159.04``), where readable.
        cuda: the newest CUDA (major, minor) the driver supports, or None without a driver.
        gpus: how many GPUs it shows this process.
        problem: why no GPU can be used (one line naming the fix), or None.
    """

    version: str | None
    cuda: tuple[int, int] | None
    gpus: int
    problem: str | None


def _kernel_module_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return found.group(1) if found else None


@functools.lru_cache(maxsize=1)
def nvidia_driver() -> Driver:
    """Probe the NVIDIA driver through ``libcuda`` (``cuInit``, ``cuDriverGetVersion``, ``cuDeviceGetCount``).

    Examples:
        >>> driver = nvidia_driver()
        >>> driver.problem is None or "driver" in driver.problem or "GPU" in driver.problem
        True
    """
    if sys.platform == "darwin":
        return Driver(None, None, 0, "macOS has no CUDA: use device 'mps' (PyTorch) or a CoreML model")
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return Driver(None, None, 0, f"no NVIDIA driver on this machine ({name} not found): install the NVIDIA "
                                     f"driver (>= {MIN_DRIVER[13].split('.')[0]} for CUDA 13), {_FALLBACK}")
    version = _kernel_module_version()
    raw = ctypes.c_int(0)
    cuda = None
    if lib.cuDriverGetVersion(ctypes.byref(raw)) == 0 and raw.value:
        cuda = (raw.value // 1000, raw.value % 1000 // 10)
    label = f"the NVIDIA driver{f' {version}' if version else ''}"
    status = lib.cuInit(0)
    if status != 0:
        why = _CUDA_ERRORS.get(status, f"error {status}")
        return Driver(version, cuda, 0, f"{label} finds no usable GPU (cuInit: {why}): check that the GPU is visible "
                                        f"here (nvidia-smi, CUDA_VISIBLE_DEVICES, the container's GPU access), "
                                        f"{_FALLBACK}")
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    if count.value < 1:
        return Driver(version, cuda, 0, f"{label} shows no GPU to this process (check CUDA_VISIBLE_DEVICES), "
                                        f"{_FALLBACK}")
    return Driver(version, cuda, count.value, None)


def driver_problem(needs_cuda: tuple[int, int] | None = None, index: int = 0, runtime: str = "the runtime") -> str | None:
    """Why the driver cannot run a build for CUDA ``needs_cuda`` on GPU ``index``, or None when it can.

    Examples:
        >>> problem = driver_problem(13)
        >>> problem is None or "driver" in problem or "GPU" in problem
        True
    """
    driver = nvidia_driver()
    if driver.problem:
        return driver.problem
    if needs_cuda and driver.cuda and driver.cuda < needs_cuda:
        floor = MIN_DRIVER.get(needs_cuda[0])
        return (f"the NVIDIA driver{f' {driver.version}' if driver.version else ''} supports CUDA "
                f"{driver.cuda[0]}.{driver.cuda[1]} but {runtime} is built for CUDA {needs_cuda[0]}.{needs_cuda[1]}: "
                f"update the NVIDIA driver{f' (>= {floor})' if floor else ''}, {_FALLBACK}")
    if index >= driver.gpus:
        shown = ", ".join(f"cuda:{i}" for i in range(driver.gpus))
        return f"device cuda:{index} does not exist: this machine shows {driver.gpus} GPU(s) ({shown})"
    return None


def _nvidia_library_dirs() -> list[Path]:
    """``site-packages/nvidia/*/lib`` of NVIDIA's pip packages (nvidia-cublas, nvidia-cudnn-cu13 …)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec else []
    return sorted({d for root in roots for d in Path(root).glob("*/lib") if d.is_dir()})


def find_library(soname: str) -> str | None:
    """Where ``soname`` loads from: the name itself (the system's search path) or a file of NVIDIA's pip packages.

    Examples:
        >>> find_library("libno-such-library.so.1") is None
        True
    """
    try:
        ctypes.CDLL(soname)
        return soname
    except OSError:
        pass
    for folder in _nvidia_library_dirs():
        if (folder / soname).is_file():
            return str(folder / soname)
    return None


def load_libraries(sonames: tuple[str, ...] | list[str]) -> list[str]:
    """Load each library globally (as ONNX Runtime's providers expect to find them); return the ones not found.

    A library found only in NVIDIA's pip packages is loaded from there, so a runtime that asks the system loader
    for it by name finds it already loaded (what ``import torch`` does for its own CUDA libraries).

    Examples:
        >>> load_libraries(["libno-such-library.so.1"])
        ['libno-such-library.so.1']
    """
    missing = []
    for soname in sonames:
        where = find_library(soname)
        if where is None:
            missing.append(soname)
            continue
        try:
            ctypes.CDLL(where, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            missing.append(soname)
    return missing


@dataclass(frozen=True)
class OnnxRuntimeBuild:
    """The onnxruntime that ``import onnxruntime`` gives, and the ONNX Runtime distributions installed."""

    package: str
    version: str
    cuda: tuple[int, int] | None
    providers: tuple[str, ...]
    distributions: tuple[str, ...]
    tensorrt_major: int | None


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ONNXRUNTIME_GPU_VERSION


def _tensorrt_major(ort: Any) -> int | None:
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    try:
        found = re.search(rb"libnvinfer\.so\.(\d+)", library.read_bytes())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def onnxruntime_build(ort: Any) -> OnnxRuntimeBuild:
    """What the imported ``onnxruntime`` module is: CPU or GPU build, its CUDA version, the distributions behind it.

    Examples:
        >>> import onnxruntime
        >>> onnxruntime_build(onnxruntime).version == onnxruntime.__version__
        True
    """
    try:
        from onnxruntime.capi import build_and_package_info as info

        package, version = str(info.package_name), str(info.__version__)
        cuda_text = getattr(info, "cuda_version", None) or ""
    except ImportError:
        package, version, cuda_text = "onnxruntime", str(getattr(ort, "__version__", "?")), ""
    found = re.match(r"(\d+)\.(\d+)", cuda_text)
    names = {str(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    providers = tuple(ort.get_available_providers())
    return OnnxRuntimeBuild(package, version, (int(found.group(1)), int(found.group(2))) if found else None, providers,
                            tuple(n for n in ("onnxruntime", "onnxruntime-gpu") if n in names),
                            _tensorrt_major(ort) if "TensorrtExecutionProvider" in providers else None)


def onnxruntime_cuda_problem(ort: Any, *, tensorrt: bool = False, index: int = 0, load: bool = True) -> str | None:
    """Why ONNX Runtime cannot run on GPU ``index`` (with TensorRT when ``tensorrt``), or None when it can.

    With ``load`` (the default) the CUDA, cuDNN and TensorRT libraries are also loaded, from NVIDIA's pip packages
    where the system has none, so that the session that follows finds them.

    Examples:
        >>> import onnxruntime
        >>> problem = onnxruntime_cuda_problem(onnxruntime)
        >>> problem is None or "cuda" in problem.lower() or "gpu" in problem.lower()
        True
    """
    build = onnxruntime_build(ort)
    place = f"pip install --force-reinstall --no-deps 'onnxruntime-gpu=={_installed_version('onnxruntime-gpu')}'"
    if "CUDAExecutionProvider" not in build.providers:
        if "onnxruntime-gpu" in build.distributions:
            return (f"onnxruntime and onnxruntime-gpu are both installed and the CPU build's files are the ones in "
                    f"place (they share one folder): {place}")
        return (f"the onnxruntime installed ({build.version}) is the CPU build: pip install 'cellsdk[cuda]' && "
                f"pip install --force-reinstall --no-deps 'onnxruntime-gpu=={ONNXRUNTIME_GPU_VERSION}' (docs/gpu.md, "
                f"'On an NVIDIA GPU'), {_FALLBACK}")
    where = f"{build.package} {build.version}"
    if tensorrt and "TensorrtExecutionProvider" not in build.providers:
        return (f"{where} has no TensorRT provider: use onnxruntime-gpu {ONNXRUNTIME_GPU_VERSION} "
                f"(pip install 'cellsdk[tensorrt]'), or use device 'cuda'")
    problem = driver_problem(build.cuda, index, where)
    if problem or not load:
        return problem
    major = build.cuda[0] if build.cuda else 13
    missing = load_libraries(cuda_libraries(major))
    if missing:
        return (f"{where} needs CUDA {major} and cuDNN 9 libraries that are not found ({', '.join(missing)}): "
                f"pip install '{build.package}[cuda,cudnn]=={build.version}' (NVIDIA's pip packages), or put the "
                f"CUDA {major} toolkit and cuDNN 9 on LD_LIBRARY_PATH, {_FALLBACK}")
    if tensorrt:
        trt = build.tensorrt_major or 10
        missing = load_libraries((f"libnvinfer.so.{trt}", f"libnvinfer_plugin.so.{trt}", f"libnvonnxparser.so.{trt}"))
        if missing:
            package = TENSORRT_PACKAGE if trt == 10 and major == 13 else f"tensorrt-cu{major}>={trt},<{trt + 1}"
            return (f"{where}'s TensorRT provider needs TensorRT {trt}, which is not found ({', '.join(missing)}): "
                    f"pip install '{package}' (from pypi.nvidia.com), or use device 'cuda'")
    return None


def torch_cuda_problem(torch: Any, index: int = 0) -> str | None:
    """Why PyTorch cannot run on GPU ``index``, or None when it can.

    Examples:
        >>> torch_cuda_problem() is None  # doctest: +SKIP
        False
    """
    version = str(getattr(torch, "__version__", "?"))
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        return None
    built = getattr(torch.version, "cuda", None)
    if not built:
        return (f"this PyTorch ({version}) is a CPU-only build: install a CUDA build (on Linux the PyPI wheel is one; "
                f"else see pytorch.org/get-started), {_FALLBACK}")
    found = re.match(r"(\d+)\.(\d+)", str(built))
    needs = (int(found.group(1)), int(found.group(2))) if found else None
    problem = driver_problem(needs, index, f"PyTorch {version}")
    if problem:
        return problem
    return f"PyTorch {version} (CUDA {built}) cannot use the GPU the driver shows: run nvidia-smi, {_FALLBACK}"


def gpu_device_kind(device: str) -> str | None:
    """``cuda`` or ``tensorrt`` for an NVIDIA device name (``cuda``, ``cuda:1``, ``tensorrt:0``), else None.

    Examples:
        >>> gpu_device_kind("cuda:1"), gpu_device_kind("TensorRT"), gpu_device_kind("cpu"), gpu_device_kind("gpu")
        ('cuda', 'tensorrt', None, None)
    """
    kind = str(device).split(":", 1)[0].strip().lower()
    return kind if kind in ("cuda", "tensorrt") else None


def device_index(device: str) -> int:
    """The CUDA device number in ``cuda:N`` / ``tensorrt:N`` (0 without one).

    Examples:
        >>> device_index("cuda:2"), device_index("tensorrt")
        (2, 0)
    """
    _, _, index = str(device).partition(":")
    return int(index) if index.strip().isdigit() else 0


def gpu_identity(device: str = "cuda") -> dict[str, Any] | None:
    """The GPU behind an NVIDIA device name, as verification records name it: ``gpu`` (NVML's name), ``driver``,
    ``cuda_driver``, ``memory_total_mb``; None where NVML (part of the driver) cannot say.

    Examples:
        >>> gpu_identity("cpu") is None
        True
    """
    from cellsdk.platform.nvml import gpu_info

    info = gpu_info(device_index(device))
    if not info or not info.get("name"):
        return None
    return {"gpu": str(info["name"]), "driver": info.get("driver"), "cuda_driver": info.get("cuda_driver"),
            "memory_total_mb": info.get("memory_total_mb")}

"""The NVIDIA GPU as NVML sees it: name, memory, driver (torch-free, through ``libnvidia-ml.so.1``).

Benchmarks on ``cuda`` / ``tensorrt`` record which GPU and driver they ran on
and how much GPU memory a row held. NVML ships with the NVIDIA driver, so this
needs no Python package; without a driver every function returns None.

GPU memory is read for the whole device (NVML's ``used``), not per process:
a container often cannot see its own PID in NVML's process list. The
benchmark worker therefore records memory in use after a row minus before
it, which is the row's own only when nothing else uses that GPU meanwhile
(the benchmark's machine facts say so).

Examples:
    >>> info = gpu_info()
    >>> info is None or {"name", "memory_total_mb", "driver"} <= set(info)
    True
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

__all__ = ["gpu_info", "gpu_memory_used_mb", "physical_index"]

_NAME_BUFFER = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE
_VERSION_BUFFER = 80  # NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _library() -> Any:
    """NVML, initialised, or None where there is no NVIDIA driver (or it refuses to start)."""
    if sys.platform == "darwin":
        return None
    try:
        lib = ctypes.CDLL("nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        return lib if lib.nvmlInit_v2() == 0 else None
    except AttributeError:  # a libnvidia-ml too old to have the v2 entry points
        return None


def physical_index(index: int, visible_devices: str | None = None) -> int:
    """The NVML index of CUDA device ``index``: NVML ignores ``CUDA_VISIBLE_DEVICES``, CUDA renumbers by it.

    Args:
        visible_devices: the ``CUDA_VISIBLE_DEVICES`` value (default: this process's).

    Examples:
        >>> physical_index(1, "2,3"), physical_index(1, "")
        (3, 1)
    """
    if visible_devices is None:
        visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    visible = [part.strip() for part in visible_devices.split(",") if part.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index  # unset, or GPUs named by UUID: the order is CUDA's own


def _device(lib: Any, index: int) -> Any:
    handle = ctypes.c_void_p()
    return handle if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(physical_index(index)), ctypes.pointer(handle)) == 0 \
        else None


def _memory(lib: Any, handle: Any) -> _Memory | None:
    memory = _Memory()
    return memory if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.pointer(memory)) == 0 else None


def gpu_memory_used_mb(index: int = 0) -> float | None:
    """Memory in use on CUDA device ``index`` (all processes), in MiB, or None without NVML or that GPU.

    Examples:
        >>> gpu_memory_used_mb(99) is None  # no such GPU (or none at all)
        True
    """
    lib = _library()
    if lib is None:
        return None
    try:
        handle = _device(lib, index)
        memory = None if handle is None else _memory(lib, handle)
        return None if memory is None else memory.used / 2**20
    finally:
        lib.nvmlShutdown()


def gpu_info(index: int = 0) -> dict[str, Any] | None:
    """CUDA device ``index``: ``name``, ``memory_total_mb``, ``driver`` and ``cuda_driver`` (the newest CUDA it runs).

    None without NVML or that GPU.

    Examples:
        >>> info = gpu_info(99)  # no such GPU (or no NVIDIA driver at all)
        >>> info is None
        True
    """
    lib = _library()
    if lib is None:
        return None
    try:
        handle = _device(lib, index)
        if handle is None:
            return None
        name = ctypes.create_string_buffer(_NAME_BUFFER)
        driver = ctypes.create_string_buffer(_VERSION_BUFFER)
        cuda = ctypes.c_int(0)
        memory = _memory(lib, handle)
        info: dict[str, Any] = {
            "index": index,
            "name": name.value.decode(errors="replace") if lib.nvmlDeviceGetName(handle, name, _NAME_BUFFER) == 0
            else None,
            "memory_total_mb": None if memory is None else round(memory.total / 2**20),
            "driver": driver.value.decode(errors="replace")
            if lib.nvmlSystemGetDriverVersion(driver, _VERSION_BUFFER) == 0 else None,
            "cuda_driver": None,
        }
        if lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.pointer(cuda)) == 0 and cuda.value:
            info["cuda_driver"] = f"{cuda.value // 1000}.{cuda.value % 1000 // 10}"
        return info
    finally:
        lib.nvmlShutdown()

"""Which devices each runtime can use on this machine, and why not where it cannot (behind ``cellsdk devices``).

One row per (device, runtime): the CPU and its class, the NVIDIA driver, ONNX
Runtime on ``cpu`` / ``cuda`` / ``tensorrt``, PyTorch (TorchScript and training)
on ``cpu`` / ``cuda`` / ``mps``, OpenVINO's devices and CoreML. A row that is not
available says, in one line, what to install (see :mod:`cellsdk.platform.gpu`). Runtimes
that are not installed are reported, never imported by ``import cellsdk``.

Examples:
    >>> rows = device_report(torch=False)
    >>> rows[0].device, rows[0].available
    ('cpu', True)
    >>> require_device("cpu", rows).runtime
    'onnxruntime'
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cellsdk._table import text_table
from cellsdk.errors import ConfigError, DeviceUnavailableError
from cellsdk.platform.cpu import host_cpu

__all__ = ["DeviceStatus", "device_report", "format_device_report", "require_device"]


@dataclass(frozen=True)
class DeviceStatus:
    """One device as one runtime sees it.

    Attributes:
        device: ``cpu``, ``cuda``, ``tensorrt``, ``mps``, ``coreml``, an OpenVINO device (``openvino:GPU``) or
            ``driver`` (the NVIDIA driver itself).
        runtime: ``onnxruntime``, ``torch``, ``openvino``, ``coreml`` or ``nvidia``.
        available: whether a model can run there now.
        detail: what runs it (versions, GPU name), or why it cannot (one line naming the fix).
    """

    device: str
    runtime: str
    available: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _onnxruntime_rows() -> list[DeviceStatus]:
    if not _installed("onnxruntime"):
        why = "onnxruntime is not installed: pip install cellsdk"
        return [DeviceStatus(d, "onnxruntime", False, why) for d in ("cpu", "cuda", "tensorrt")]
    import onnxruntime as ort

    from cellsdk.platform.gpu import nvidia_driver, onnxruntime_build, onnxruntime_cuda_problem

    build = onnxruntime_build(ort)
    cpu = host_cpu()
    rows = [DeviceStatus("cpu", "onnxruntime", True, f"{build.package} {build.version} on {cpu.cpu_class} "
                                                     f"({cpu.model})")]
    for device in ("cuda", "tensorrt"):
        problem = onnxruntime_cuda_problem(ort, tensorrt=device == "tensorrt")
        if problem:
            rows.append(DeviceStatus(device, "onnxruntime", False, problem))
            continue
        driver = nvidia_driver()
        cuda = f"CUDA {build.cuda[0]}.{build.cuda[1]}" if build.cuda else "CUDA"
        extra = f", TensorRT {build.tensorrt_major}" if device == "tensorrt" else ""
        rows.append(DeviceStatus(device, "onnxruntime", True,
                                 f"{build.package} {build.version} ({cuda}{extra}), {driver.gpus} GPU(s)"))
    return rows


def _torch_rows() -> list[DeviceStatus]:
    if not _installed("torch"):
        why = "torch is not installed: pip install 'cellsdk[train]'"
        return [DeviceStatus(d, "torch", False, why) for d in ("cpu", "cuda", "mps")]
    import torch

    from cellsdk.platform.gpu import torch_cuda_problem

    rows = [DeviceStatus("cpu", "torch", True, f"PyTorch {torch.__version__}")]
    problem = torch_cuda_problem(torch)
    rows.append(DeviceStatus("cuda", "torch", problem is None, problem or (
        f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}): {torch.cuda.get_device_name(0)}"
        f"{f' and {torch.cuda.device_count() - 1} more' if torch.cuda.device_count() > 1 else ''}")))
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    rows.append(DeviceStatus("mps", "torch", has_mps, f"PyTorch {torch.__version__}" if has_mps else
                             "Apple MPS needs a Mac with Apple silicon and PyTorch built with MPS"))
    return rows


def _openvino_rows() -> list[DeviceStatus]:
    if not _installed("openvino"):
        return [DeviceStatus("cpu", "openvino", False, "OpenVINO is not installed: pip install 'cellsdk[openvino]'")]
    import openvino as ov

    core = ov.Core()
    return [DeviceStatus(name.lower() if name == "CPU" else f"openvino:{name}", "openvino", True,
                         f"OpenVINO {ov.__version__.split('-')[0]}: {core.get_property(name, 'FULL_DEVICE_NAME')}")
            for name in core.available_devices]


def device_report(*, torch: bool = True) -> list[DeviceStatus]:
    """Every (device, runtime) pair, available or with the reason it is not; ``torch=False`` leaves PyTorch out
    (importing it takes seconds).

    Examples:
        >>> rows = device_report(torch=False)
        >>> next(r for r in rows if r.device == "cpu" and r.runtime == "onnxruntime").available
        True
    """
    from cellsdk.platform.gpu import nvidia_driver

    driver = nvidia_driver()
    if driver.problem:
        detail = driver.problem
    else:
        cuda = f", CUDA {driver.cuda[0]}.{driver.cuda[1]}" if driver.cuda else ""
        detail = f"NVIDIA driver {driver.version or '(version unread)'}{cuda}, {driver.gpus} GPU(s)"
    nvidia = DeviceStatus("driver", "nvidia", driver.problem is None, detail)
    rows = [*_onnxruntime_rows(), nvidia, *(_torch_rows() if torch else []), *_openvino_rows()]
    if sys.platform == "darwin":
        ok = _installed("coremltools")
        rows.append(DeviceStatus("coreml", "coreml", ok, "coremltools: CPU, GPU and Neural Engine" if ok else
                                 "coremltools is not installed: pip install 'cellsdk[coreml]'"))
    else:
        rows.append(DeviceStatus("coreml", "coreml", False, f"CoreML runs on macOS only (this is {sys.platform})"))
    return rows


def require_device(device: str, rows: Sequence[DeviceStatus] | None = None) -> DeviceStatus:
    """The first runtime that can use ``device`` (``cpu``, ``cuda``, ``tensorrt``, ``mps``, ``coreml``).

    Raises:
        DeviceUnavailableError: no runtime can; the message is the first reason, naming what to install.
        ConfigError: an unknown device name.

    Examples:
        >>> require_device("cpu", device_report(torch=False)).runtime
        'onnxruntime'
    """
    rows = list(rows) if rows is not None else device_report()
    matching = [row for row in rows if row.device == device.lower()]
    if not matching:
        known = sorted({row.device for row in rows} - {"driver"})
        raise ConfigError(f"unknown device {device!r}: use one of {', '.join(known)}")
    for row in matching:
        if row.available:
            return row
    reasons = "; ".join(f"{row.runtime}: {row.detail}" for row in matching)
    raise DeviceUnavailableError(f"device {device!r} is not usable here ({reasons})")


def format_device_report(rows: Sequence[DeviceStatus]) -> str:
    """The report as an aligned table.

    Examples:
        >>> format_device_report(device_report(torch=False)).split()[:3]
        ['device', 'runtime', 'ready']
    """
    return text_table(["device", "runtime", "ready", "detail"],
                      [[row.device, row.runtime, "yes" if row.available else "no", row.detail] for row in rows])

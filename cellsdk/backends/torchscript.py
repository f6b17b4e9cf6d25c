"""TorchScript backend: ``.torchscript`` / ``.pt`` archives on cpu, cuda or mps (LibTorch services, CUDA boxes).

Metadata is read from the archive's ``_extra_files`` (entry ``cellsdk``).
Loading this backend imports torch; ``import cellsdk`` does not.

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.torchscript", device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from cellsdk.backends.base import Backend, register_backend
from cellsdk.errors import ConfigError, DeviceUnavailableError, UnsupportedFormatError
from cellsdk.metadata import METADATA_KEY

__all__ = ["TorchScriptBackend", "resolve_torch_device"]


def resolve_torch_device(name: str = "auto") -> str:
    """A torch device name: ``auto`` picks cuda, then mps, then cpu; an explicit one must exist.

    Shared by this backend and by training (which must not be needed to run a model).

    Raises:
        ConfigError: an unknown device.
        DeviceUnavailableError: a device this machine, its driver or this PyTorch build cannot use (the message
            names what to install; see :mod:`cellsdk.platform.gpu`).

    Examples:
        >>> str(resolve_torch_device("cpu"))  # doctest: +SKIP
        'cpu'
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        kind = ""
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        from cellsdk.platform.gpu import torch_cuda_problem

        problem = torch_cuda_problem(torch, torch.device(name).index or 0)
        if problem:
            raise DeviceUnavailableError(f"device {name!r}: {problem}")
    if kind == "mps" and not has_mps:
        why = "this is not a Mac" if sys.platform != "darwin" else f"this PyTorch ({torch.__version__}) has no MPS support"
        raise DeviceUnavailableError(f"device 'mps' needs Apple MPS, which is not available ({why}): use device auto "
                                     "or cpu")
    return name


@register_backend("torchscript", ".torchscript", ".pt", ".ts", package="torch", install="pip install torch")
class TorchScriptBackend(Backend):
    """A TorchScript module run under ``torch.inference_mode``.

    Options:
        threads: ``torch.set_num_threads`` (process-wide in PyTorch).
    """

    devices = ("cpu", "cuda", "mps")

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        if device == "cuda" and cls.unavailable_reason() is None:
            import torch

            from cellsdk.platform.gpu import torch_cuda_problem

            return torch_cuda_problem(torch)
        return super().device_unavailable_reason(device)

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        torch = self.require()
        self.torch = torch
        self.device = resolve_torch_device(device)
        if threads is not None:
            torch.set_num_threads(int(threads))
        extra = {METADATA_KEY: ""}
        try:
            with warnings.catch_warnings():  # torch >= 2.11 marks torch.jit deprecated (2.11: DeprecationWarning, 2.14:
                # FutureWarning); TorchScript is still what LibTorch runs
                warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError) as err:
            raise UnsupportedFormatError(
                f"{path}: not a TorchScript archive ({str(err).splitlines()[0][:120]}); a training checkpoint "
                "is converted with cellsdk-convert"
            ) from None
        self.module.eval()
        self.output_count = None  # a scripted module's outputs are known only when it runs
        raw = extra[METADATA_KEY]
        self.metadata_json = (raw.decode("utf-8") if isinstance(raw, bytes) else raw) or None

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            output = self.module(torch.from_numpy(batch).to(self.device))
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        return [o.float().cpu().numpy() for o in outputs]

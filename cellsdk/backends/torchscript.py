"""TorchScript backend: ``.torchscript`` / ``.pt`` archives on cpu, cuda or mps (LibTorch services, CUDA boxes).

Metadata is read from the archive's ``_extra_files`` (entry ``cellsdk``).
Loading this backend imports torch; ``import cellsdk`` does not.

Example:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.torchscript", device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.backends import Backend, register_backend
from cellsdk.errors import ConfigError, UnsupportedFormatError
from cellsdk.metadata import METADATA_KEY

__all__ = ["TorchScriptBackend"]


@register_backend("torchscript", ".torchscript", ".pt", ".ts", package="torch", install="pip install torch")
class TorchScriptBackend(Backend):
    """A TorchScript module run under ``torch.inference_mode``.

    Options:
        threads: ``torch.set_num_threads`` (process-wide in PyTorch).
    """

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        torch = self.require()
        self.torch = torch
        self.device = self._device(torch, device)
        if threads is not None:
            torch.set_num_threads(int(threads))
        extra = {METADATA_KEY: ""}
        try:
            with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; TorchScript is still what LibTorch runs
                warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError) as err:
            raise UnsupportedFormatError(
                f"{path}: not a TorchScript archive ({str(err).splitlines()[0][:120]}); a training checkpoint "
                "is converted with cellsdk-convert"
            ) from None
        self.module.eval()
        raw = extra[METADATA_KEY]
        self.metadata_json = (raw.decode("utf-8") if isinstance(raw, bytes) else raw) or None

    @staticmethod
    def _device(torch: Any, device: str) -> str:
        if device == "auto":
            if torch.cuda.is_available():
                return "cuda"
            mps = getattr(torch.backends, "mps", None)
            return "mps" if mps is not None and mps.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but no CUDA GPU is available: use device='auto' or 'cpu'")
        if device == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device mps requested but Apple MPS is not available: use device='auto' or 'cpu'")
        if device != "cpu" and not device.startswith(("cuda", "mps")):
            raise ConfigError(f"device {device!r} is not a torch device: use auto, cpu, cuda, cuda:N or mps")
        return device

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            output = self.module(torch.from_numpy(batch).to(self.device))
        return output.float().cpu().numpy()

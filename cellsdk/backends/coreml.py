"""CoreML backend: ``.mlpackage`` / ``.mlmodel`` on macOS (Apple Silicon: CPU, GPU, Neural Engine).

CoreML predictions need macOS. Elsewhere, loading raises
:class:`~cellsdk.errors.PlatformNotSupportedError` naming the formats that do
run here. Metadata is read from ``user_defined_metadata`` (key ``cellsdk``).

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.mlpackage", compute_units="ALL")  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.backends.base import Backend, register_backend
from cellsdk.errors import ConfigError, PlatformNotSupportedError, UnsupportedFormatError
from cellsdk.metadata import METADATA_KEY

__all__ = ["CoreMLBackend", "not_on_macos_message"]

_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def not_on_macos_message() -> str:
    """The one-line explanation given off macOS.

    Examples:
        >>> "macOS" in not_on_macos_message()
        True
    """
    return (f"CoreML models run only on macOS (this is {sys.platform}); here use the .onnx (ONNX Runtime), "
            ".xml (OpenVINO) or .torchscript artefact of the same conversion")


@register_backend("coreml", ".mlpackage", ".mlmodel", package="coremltools", install="pip install 'cellsdk[coreml]'")
class CoreMLBackend(Backend):
    """A CoreML model; calls are serialised with a lock.

    Options:
        compute_units: ``ALL`` (default), ``CPU_ONLY``, ``CPU_AND_GPU`` or ``CPU_AND_NE``.
    """

    devices = ("coreml",)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if sys.platform != "darwin":
            return not_on_macos_message()
        return super().unavailable_reason()

    @classmethod
    def read_metadata_json(cls, path: Path) -> str | None:
        """The metadata from the model's spec, without loading it for prediction (works off macOS too).

        Examples:
            >>> CoreMLBackend.read_metadata_json("converted/model.fp16.mlpackage")[:11]  # doctest: +SKIP
            '{"arch": "t'
        """
        ct = cls.require()
        try:
            model = ct.models.MLModel(str(path), skip_model_load=True)
        except Exception as err:  # noqa: BLE001 - coremltools raises many types for bad packages
            raise UnsupportedFormatError(f"{path}: not a readable CoreML model ({str(err).splitlines()[0]})") from None
        return dict(model.user_defined_metadata).get(METADATA_KEY)

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 compute_units: str = "ALL") -> None:
        if str(device).split(":")[0].lower() in ("cuda", "gpu", "tensorrt", "mps", "npu"):
            raise ConfigError(f"device {device!r} is not a CoreML device: use device auto, and compute_units "
                              "(ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE) to choose Apple's CPU, GPU or Neural Engine")
        if sys.platform != "darwin":
            raise PlatformNotSupportedError(f"{path}: {not_on_macos_message()}")
        ct = self.require()
        if compute_units not in _UNITS:
            raise ConfigError(f"compute_units {compute_units!r}: use one of {', '.join(_UNITS)}")
        try:
            self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])
        except Exception as err:  # noqa: BLE001 - coremltools raises many types for bad packages
            raise UnsupportedFormatError(f"{path}: not a loadable CoreML model ({str(err).splitlines()[0]})") from None
        spec = self.model.get_spec().description
        self.input_name = spec.input[0].name
        self.output_names = [o.name for o in spec.output]
        self.output_count = len(self.output_names)
        shape = tuple(spec.input[0].type.multiArrayType.shape)
        self.input_shape = tuple(int(d) for d in shape) if len(shape) == 4 else (None, 3, None, None)
        self.metadata_json = dict(self.model.user_defined_metadata).get(METADATA_KEY)
        self.device = compute_units
        self._lock = threading.Lock()

    model: Any
    input_name: str
    output_names: list[str]
    _lock: threading.Lock

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            result = self.model.predict({self.input_name: batch})
        return [np.asarray(result[name], dtype=np.float32).reshape(len(batch), -1) for name in self.output_names]

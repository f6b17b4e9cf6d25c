"""OpenVINO backend: IR models (``.xml`` + ``.bin``) on CPU, or GPU / NPU / AUTO when present.

Metadata is read from the model's ``rt_info`` (key ``cellsdk``). The model is
compiled with the LATENCY performance hint by default. ``precision`` sets
``INFERENCE_PRECISION_HINT``; by default it is the artefact's own precision
(:func:`precision_hint`): left to itself, OpenVINO runs an "fp32" IR in bf16 on
CPUs with AVX-512 BF16 or AMX, and the float parts of an int8 IR too, so an
artefact verified in f32 would silently compute differently there. Each calling
thread gets its own infer request, so one Classifier can serve several threads.

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.xml", device="cpu", precision="f32")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.backends.base import Backend, register_backend
from cellsdk.errors import ConfigError, UnsupportedFormatError
from cellsdk.metadata import METADATA_KEY

__all__ = ["OpenVinoBackend", "precision_hint"]

_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_PRECISIONS = ("f32", "bf16", "f16")


def precision_hint(precision: str | None, device: str = "CPU") -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` that runs an artefact of ``precision`` at that precision on ``device``.

    fp32, and the float layers of int8 / fp16 IRs (fp16 is a storage format on CPUs), compute in ``f32``; a
    bf16 artefact in ``bf16`` (on a CPU without bf16 OpenVINO then computes in f32); on an Intel GPU or NPU
    an fp16 artefact in ``f16``. None leaves the device's default (an unknown precision).

    Examples:
        >>> precision_hint("fp32"), precision_hint("int8"), precision_hint("bf16"), precision_hint("fp16", "GPU")
        ('f32', 'f32', 'bf16', 'f16')
    """
    if precision == "bf16":
        return "bf16"
    if precision == "fp16" and not device.upper().startswith(("CPU", "AUTO")):
        return "f16"
    if precision in ("fp32", "fp16", "int8", None):
        return "f32"
    return None


@register_backend("openvino", ".xml", package="openvino", install="pip install 'cellsdk[openvino]'")
class OpenVinoBackend(Backend):
    """An OpenVINO IR compiled for one device.

    Options:
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).
        performance_hint: ``LATENCY`` (default), ``THROUGHPUT`` or ``CUMULATIVE_THROUGHPUT``.
        precision: ``INFERENCE_PRECISION_HINT``: ``f32``, ``bf16`` or ``f16`` (default: the artefact's own
            precision, :func:`precision_hint`; an IR without cellsdk metadata runs in ``f32``).
    """

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 performance_hint: str = "LATENCY", precision: str | None = None) -> None:
        ov = self.require()
        if not path.with_suffix(".bin").is_file():
            raise UnsupportedFormatError(f"{path}: the weights file {path.with_suffix('.bin').name} is missing beside it")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for bad IR
            raise UnsupportedFormatError(f"{path}: not a readable OpenVINO IR ({str(err).splitlines()[0]})") from None
        if len(model.inputs) != 1:
            raise UnsupportedFormatError(f"{path}: expected one image input, the model has {len(model.inputs)}")
        if model.has_rt_info([METADATA_KEY]):
            self.metadata_json = model.get_rt_info([METADATA_KEY]).astype(str)
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in model.inputs[0].partial_shape)
        last = model.outputs[0].partial_shape[-1]
        self.num_outputs = last.get_length() if last.is_static else None
        self.device = self._device(core, device)
        config: dict[str, Any] = {"PERFORMANCE_HINT": self._choice(performance_hint.upper(), _HINTS, "performance_hint")}
        hint = self._choice(precision.lower(), _PRECISIONS, "precision") if precision is not None else \
            precision_hint(_stated_precision(self.metadata_json), self.device)
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, self.device, config)
        self.outputs = list(self.compiled.outputs)
        self.output_count = len(self.outputs)
        self._local = threading.local()

    @staticmethod
    def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
        if value not in allowed:
            raise ConfigError(f"openvino {name} {value!r}: use one of {', '.join(allowed)}")
        return value

    @staticmethod
    def _device(core: Any, device: str) -> str:
        available = list(core.available_devices)
        wanted = device.upper()
        if wanted == "AUTO":
            return "AUTO" if len(available) > 1 else "CPU"
        if wanted.split(":")[0] in ("CUDA", "TENSORRT"):
            raise ConfigError(f"OpenVINO does not run on NVIDIA devices ({device!r}): use device cpu, gpu (Intel), npu "
                              "or auto, or the model's .onnx / .torchscript artefact for CUDA")
        if wanted.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise ConfigError(f"OpenVINO device {device!r} is not present here (available: {', '.join(available)})")
        return wanted

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer({0: batch})
        return [results[output].copy() for output in self.outputs]

    def describe(self) -> str:
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        return f"openvino on {self.device} ({name})"


def _stated_precision(metadata_json: str | None) -> str | None:
    """The ``precision`` an IR's cellsdk metadata states (None without readable metadata: a plain IR)."""
    if metadata_json is None:
        return None
    import json

    try:
        precision = json.loads(metadata_json).get("precision")
    except (ValueError, AttributeError):
        return None  # resolve_metadata names the problem
    return precision if isinstance(precision, str) else None

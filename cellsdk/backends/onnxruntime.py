"""ONNX Runtime backend: ``.onnx`` files, CPU by default, CUDA / TensorRT when present.

Metadata is read from the model's ``metadata_props`` (key ``cellsdk``). An
``InferenceSession`` is safe to call from several threads at once.

Example:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.onnx", device="cpu", threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.backends import Backend, register_backend
from cellsdk.errors import ConfigError, UnsupportedFormatError
from cellsdk.metadata import METADATA_KEY

__all__ = ["OnnxRuntimeBackend"]

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@register_backend("onnxruntime", ".onnx", package="onnxruntime", install="pip install onnxruntime")
class OnnxRuntimeBackend(Backend):
    """An ONNX model in an ``onnxruntime.InferenceSession``.

    Options:
        threads: intra-op threads (default: ONNX Runtime's choice, the physical cores).
        providers: an explicit execution-provider list, overriding ``device``.
        graph_optimization: ``all`` (default), ``extended``, ``basic`` or ``none``.
        spinning: whether idle intra-op threads spin-wait for the next work (ONNX Runtime's default, True) or
            sleep (False: frees the cores for other work, e.g. the engine's decoding threads).
    """

    devices = ("cpu", "cuda")

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        if device == "cuda":
            import onnxruntime as ort

            if not any(p in ort.get_available_providers() for p in _GPU_PROVIDERS):
                return "onnxruntime has no CUDA provider: pip install onnxruntime-gpu"
        return super().device_unavailable_reason(device)

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 providers: list[str] | None = None, graph_optimization: str = "all",
                 spinning: bool | None = None) -> None:
        ort = self.require()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if graph_optimization not in levels:
            raise ConfigError(f"graph_optimization {graph_optimization!r}: use one of {', '.join(levels)}")
        options.graph_optimization_level = levels[graph_optimization]
        chosen = providers or self._providers(ort, device)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as err:  # noqa: BLE001 - ORT raises several unrelated types for bad files
            raise UnsupportedFormatError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise UnsupportedFormatError(f"{path}: expected one image input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        last = outputs[0].shape[-1] if outputs[0].shape else None
        self.num_outputs = last if isinstance(last, int) else None
        self.output_count = len(outputs)
        self.metadata_json = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.device = self.session.get_providers()[0]

    @staticmethod
    def _providers(ort: Any, device: str) -> list[str]:
        available = ort.get_available_providers()
        if device in ("auto", "cuda", "gpu"):
            gpu = [p for p in _GPU_PROVIDERS if p in available]
            if device != "auto" and not gpu:
                raise ConfigError(
                    "device cuda requested but this onnxruntime has no CUDA provider: pip install onnxruntime-gpu, "
                    "or use device='cpu'"
                )
            return [*gpu, "CPUExecutionProvider"]
        if device == "cpu":
            return ["CPUExecutionProvider"]
        raise ConfigError(f"device {device!r} is not an onnxruntime device: use auto, cpu or cuda")

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})

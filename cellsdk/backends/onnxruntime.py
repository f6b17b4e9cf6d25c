"""ONNX Runtime backend: ``.onnx`` files, CPU by default, CUDA / TensorRT when present.

Metadata is read from the model's ``metadata_props`` (key ``cellsdk``). An
``InferenceSession`` is safe to call from several threads at once.

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.onnx", device="cpu", threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import user_cache_dir
from cellsdk.backends.base import Backend, register_backend
from cellsdk.backends.ort_cache import cached_session
from cellsdk.errors import ConfigError, DeviceUnavailableError, UnsupportedFormatError, describe_os_error
from cellsdk.metadata import METADATA_KEY

__all__ = ["OnnxRuntimeBackend", "default_tensorrt_cache"]

_DEVICE = re.compile(r"(auto|cpu|cuda|gpu|tensorrt)(?::(\d+))?")


def default_tensorrt_cache() -> Path:
    """Where TensorRT engines are cached by default: ``$CELLSDK_CACHE`` or ``~/.cache/cellsdk``, then ``tensorrt``.

    Examples:
        >>> default_tensorrt_cache().name
        'tensorrt'
    """
    return user_cache_dir() / "tensorrt"


@register_backend("onnxruntime", ".onnx", package="onnxruntime", install="pip install onnxruntime")
class OnnxRuntimeBackend(Backend):
    """An ONNX model in an ``onnxruntime.InferenceSession``.

    Devices: ``cpu``; ``cuda`` / ``cuda:N`` (the CUDA provider); ``tensorrt`` / ``tensorrt:N`` (the TensorRT
    provider, then CUDA for what TensorRT does not take); ``auto`` (CUDA where onnxruntime-gpu, the driver, a GPU
    and the CUDA libraries are all there, else the CPU, without a word). Asking for a GPU that is not usable raises
    :class:`~cellsdk.errors.DeviceUnavailableError` naming what to install (see :mod:`cellsdk.platform.gpu`), never a
    silent CPU run. TensorRT is never chosen by ``auto``: its first load builds an engine (minutes).

    Options:
        threads: intra-op threads (default: ONNX Runtime's choice, the physical cores).
        providers: an explicit execution-provider list, overriding ``device``.
        graph_optimization: ``all`` (default), ``extended``, ``basic`` or ``none``.
        spinning: whether idle intra-op threads spin-wait for the next work (ONNX Runtime's default, True) or
            sleep (False: frees the cores for other work, e.g. the engine's decoding threads).
        tensorrt_fp16: let TensorRT run layers in fp16 (device ``tensorrt``); int8 is enabled for a quantized
            (QDQ) model on its own.
        tensorrt_cache: the folder for TensorRT's engine and timing caches (default
            :func:`default_tensorrt_cache`); a later load of the same model reuses the engine instead of building it.
        tf32: let CUDA compute fp32 matrix products in TF32 (faster on Ampere and later; off by default, so an
            fp32 artefact computes in fp32 as verified).
    """

    devices = ("cpu", "cuda", "tensorrt")

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        if device in ("cuda", "tensorrt"):
            import onnxruntime as ort

            from cellsdk.platform.gpu import onnxruntime_cuda_problem

            return onnxruntime_cuda_problem(ort, tensorrt=device == "tensorrt", load=False)
        return super().device_unavailable_reason(device)

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 providers: list[str] | None = None, graph_optimization: str = "all",
                 spinning: bool | None = None, tensorrt_fp16: bool = False, tensorrt_cache: str | None = None,
                 tf32: bool = False) -> None:
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
        chosen: list[Any] = list(providers) if providers else self._providers(
            ort, device, path, tensorrt_fp16=tensorrt_fp16, tensorrt_cache=tensorrt_cache, tf32=tf32)
        try:
            self.session = cached_session(ort, path, options, chosen)
        except Exception as err:  # noqa: BLE001 - ORT raises several unrelated types for bad files
            raise UnsupportedFormatError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from None
        wanted = chosen[0] if isinstance(chosen[0], str) else chosen[0][0]
        running = self.session.get_providers()
        explicit = not providers and str(device).strip().lower() != "auto"
        if explicit and wanted != "CPUExecutionProvider" and wanted not in running:  # auto: the CPU is fine
            raise DeviceUnavailableError(
                f"device {device!r}: onnxruntime could not start its {wanted} and fell back to {running[0]}; "
                "`cellsdk devices` shows what is missing")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise UnsupportedFormatError(f"{path}: expected one image input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        last = outputs[0].shape[-1] if outputs[0].shape else None
        self.num_outputs = last if isinstance(last, int) else None
        self.output_count = len(outputs)
        self.metadata_json = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.device = running[0]

    @staticmethod
    def _providers(ort: Any, device: str, path: Path, *, tensorrt_fp16: bool = False,
                   tensorrt_cache: str | None = None, tf32: bool = False) -> list[Any]:
        """The provider list for ``device``; a GPU device that cannot be used raises DeviceUnavailableError.

        CUDA runs without TF32 unless ``tf32``: ONNX Runtime's default computes fp32 matrix products in TF32 (10
        mantissa bits) on Ampere and later GPUs, a silent down-cast of an fp32 artefact.
        """
        match = _DEVICE.fullmatch(str(device).strip().lower())
        if not match or (match.group(2) and match.group(1) in ("auto", "cpu")):
            raise ConfigError(f"device {device!r} is not an onnxruntime device: use auto, cpu, cuda, cuda:N, "
                              "tensorrt or tensorrt:N")
        kind, index = match.group(1), int(match.group(2) or 0)
        if kind == "cpu":
            return ["CPUExecutionProvider"]
        if kind == "auto" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return ["CPUExecutionProvider"]  # the CPU build: nothing to probe (nor to import: gpu probes NVIDIA's stack)
        from cellsdk.platform import gpu

        if kind == "auto":
            usable = gpu.onnxruntime_cuda_problem(ort) is None
            return [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": int(tf32)}), "CPUExecutionProvider"] if usable \
                else ["CPUExecutionProvider"]
        problem = gpu.onnxruntime_cuda_problem(ort, tensorrt=kind == "tensorrt", index=index)
        if problem:
            raise DeviceUnavailableError(f"device {device!r}: {problem}")
        cuda = ("CUDAExecutionProvider", {"device_id": index, "use_tf32": int(tf32)})
        if kind != "tensorrt":
            return [cuda, "CPUExecutionProvider"]
        cache = Path(tensorrt_cache) if tensorrt_cache else default_tensorrt_cache()
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"tensorrt_cache: {describe_os_error(err)}; pass a writable folder") from None
        trt = {"device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
               "trt_fp16_enable": bool(tensorrt_fp16), "trt_int8_enable": _is_quantized(path)}
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


def _is_quantized(path: Path) -> bool:
    """Whether the model holds QuantizeLinear / DequantizeLinear nodes (TensorRT then needs int8 enabled)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return b"DequantizeLinear" in data

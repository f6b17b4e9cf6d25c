"""LiteRT backend (formerly TensorFlow Lite): ``.tflite`` models on the CPU through ``ai-edge-litert``, torch-free.

LiteRT is what Android phones and tablets and many ARM boards run. The interpreter comes from the
``ai-edge-litert`` wheel (numpy and flatbuffers; no TensorFlow, no torch): ``pip install 'cellsdk[litert]'``.
The cellsdk metadata travels inside the file, in the flatbuffer's ``metadata`` table under the name ``cellsdk``
(:func:`read_tflite_metadata`; cellsdk-convert writes it with :func:`cellsdk.converters.litert.write_tflite_metadata`).
The models cellsdk converts take a batch of one: a batch runs image by image. A full-integer (int8) model's input
and outputs are int8 with their scale and zero point in the file: the backend quantizes the image and
dequantizes the outputs with them, so callers always see float32. One interpreter is not safe to
call from two threads at once, so each calling thread gets its own (they share the mapped file).

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.fp32.tflite", threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.backends.base import Backend, register_backend
from cellsdk.errors import MetadataError, UnsupportedFormatError
from cellsdk.metadata import METADATA_KEY

__all__ = ["LiteRtBackend", "dequantize", "quantize", "read_tflite_metadata", "tensor_quantization", "usable_cores"]

_FILE_IDENTIFIER = b"TFL3"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one).

    Examples:
        >>> usable_cores() >= 1
        True
    """
    affinity = getattr(os, "sched_getaffinity", None)
    return max(1, len(affinity(0)) if affinity is not None else (os.cpu_count() or 1))


def read_tflite_metadata(path: str | Path, name: str = METADATA_KEY) -> str | None:
    """The text stored under ``name`` in a ``.tflite`` file's metadata table, or None when it has none.

    Reads the flatbuffer directly (``ai_edge_litert``'s generated schema), without building an interpreter.

    Raises:
        UnsupportedFormatError: the file is not a LiteRT flatbuffer.

    Examples:
        >>> read_tflite_metadata("model.fp32.tflite")[:9]  # doctest: +SKIP
        '{"arch": '
    """
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
        raise UnsupportedFormatError(f"{path}: not a LiteRT (.tflite) flatbuffer")
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() is None or entry.Name().decode("utf-8", "replace") != name:
                continue
            buffer = model.Buffers(entry.Buffer())
            offset, size = int(buffer.Offset()), int(buffer.Size())
            raw = data[offset:offset + size] if offset > 1 else buffer.DataAsNumpy().tobytes()
            return raw.decode("utf-8")
    except (IndexError, AttributeError, UnicodeDecodeError, ValueError) as err:
        raise MetadataError(f"{path}: its {name!r} metadata cannot be read ({err}); re-convert it") from None
    return None


@register_backend("litert", ".tflite", package="ai_edge_litert", install="pip install 'cellsdk[litert]'")
class LiteRtBackend(Backend):
    """A ``.tflite`` model in the LiteRT interpreter (XNNPACK on the CPU).

    Options:
        threads: the interpreter's threads (default: every core this process may use; LiteRT's own default is
            one thread, half the speed of two on a 2-core CPU).
    """

    devices = ("cpu",)

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        if str(device).strip().lower() not in ("auto", "cpu"):
            raise UnsupportedFormatError(f"device {device!r}: the litert backend runs on the CPU (use auto or cpu)")
        self.require()
        from ai_edge_litert.interpreter import Interpreter

        self._key: str | None = None
        self._input, self._outputs = "", []
        self._path, self._threads = str(path), threads if threads is not None else usable_cores()
        self.metadata_json = read_tflite_metadata(path)
        self._local = threading.local()
        try:
            interpreter = Interpreter(model_path=self._path, num_threads=self._threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            # LiteRT repeats one complaint per tensor on a single line: the first one says what is wrong
            first = (str(err).splitlines() or [""])[0].split(".Tensor ")[0][:300]
            raise UnsupportedFormatError(f"{path}: not a loadable LiteRT model ({first})") from None
        self._local.interpreter = interpreter
        inputs = interpreter.get_input_details()
        if len(inputs) != 1:
            raise UnsupportedFormatError(f"{path}: expected one image input, the model has {len(inputs)}")
        self.input_shape = tuple(int(d) for d in inputs[0]["shape"])
        signatures = interpreter.get_signature_list()
        self._key = ("serving_default" if "serving_default" in signatures else next(iter(signatures))) \
            if signatures else None
        if self._key is not None:  # litert-torch names the outputs output_0, output_1 ... in the module's order
            self._input = next(iter(signatures[self._key]["inputs"]))
            names = list(signatures[self._key]["outputs"])
            self._outputs = sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]) if n.rsplit("_", 1)[-1].isdigit()
                                   else len(names))
        details = interpreter.get_output_details()
        if self._key is not None:
            runner = interpreter.get_signature_runner(self._key)
            in_detail, details = runner.get_input_details()[self._input], [
                runner.get_output_details()[name] for name in self._outputs]
        else:
            in_detail = inputs[0]
        self._in_q = tensor_quantization(in_detail)
        self._out_q = [tensor_quantization(d) for d in details]
        self.output_count = len(details)
        first = details[0]["shape"]
        self.num_outputs = int(first[-1]) if len(first) == 2 else None
        self.device = "CPU (XNNPACK)"

    def _interpreter(self) -> Any:
        """This thread's interpreter (created on first use: one is not safe to call from two threads at once)."""
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=self._path, num_threads=self._threads)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
        return interpreter

    def _runner(self, interpreter: Any) -> Any:
        """This thread's signature runner (made once, not per image)."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = interpreter.get_signature_runner(self._key)
        return runner

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        interpreter = self._interpreter()
        rows: list[list[np.ndarray]] = []
        step = self.input_shape[0] or 1
        for start in range(0, len(batch), step):
            part = quantize(np.ascontiguousarray(batch[start:start + step], dtype=np.float32), self._in_q)
            if self._key is not None:
                result = self._runner(interpreter)(**{self._input: part})
                raw = [result[name] for name in self._outputs]
            else:
                interpreter.set_tensor(interpreter.get_input_details()[0]["index"], part)
                interpreter.invoke()
                raw = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
            rows.append([dequantize(value, q) for value, q in zip(raw, self._out_q, strict=True)])
        return [np.concatenate([row[i] for row in rows]) for i in range(len(rows[0]))] if rows else []

    @classmethod
    def read_metadata_json(cls, path: Path) -> str | None:
        return read_tflite_metadata(path)


def tensor_quantization(detail: dict[str, Any]) -> tuple[Any, float, int] | None:
    """``(dtype, scale, zero point)`` of an integer tensor, or None for a float one.

    Examples:
        >>> tensor_quantization({"dtype": np.int8, "quantization": (0.5, -3)})
        (<class 'numpy.int8'>, 0.5, -3)
        >>> tensor_quantization({"dtype": np.float32, "quantization": (0.0, 0)}) is None
        True
    """
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return None
    scale, zero = detail["quantization"]
    if not scale:
        raise UnsupportedFormatError(f"the model's {np.dtype(dtype).name} tensor {detail.get('name', '')!r} has no "
                                     "quantization scale; re-convert it")
    return dtype, float(scale), int(zero)


def quantize(values: np.ndarray, q: tuple[Any, float, int] | None) -> np.ndarray:
    """float32 values as the integer tensor ``q`` describes (rounded, clipped to its type), or as they are.

    Examples:
        >>> quantize(np.array([0.0, 1.0, 100.0], np.float32), (np.int8, 0.5, -3)).tolist()
        [-3, -1, 127]
    """
    if q is None:
        return values
    dtype, scale, zero = q
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, q: tuple[Any, float, int] | None) -> np.ndarray:
    """An output as float32 (a copy: the interpreter reuses its buffers).

    Examples:
        >>> dequantize(np.array([-3, -1], np.int8), (np.int8, 0.5, -3)).tolist()
        [0.0, 1.0]
    """
    if q is None:
        return np.array(values, dtype=np.float32)
    _, scale, zero = q
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)

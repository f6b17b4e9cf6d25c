"""LiteRT ``.tflite`` (formerly TensorFlow Lite) through ``litert-torch``: fp32, for phones and ARM boards.

``litert_torch.convert`` lowers the same module every format exports (logits, and the ``features`` and ``cams``
outputs the guard and the explanations need, in that order; the file's serving signature names them
``output_0``, ``output_1`` ... in the module's order) with a batch of one. The cellsdk metadata goes into the
flatbuffer's ``metadata`` table under ``cellsdk`` (:func:`write_tflite_metadata`), where the torch-free LiteRT
backend reads it (:func:`cellsdk.backends.litert.read_tflite_metadata`). Quantized LiteRT artefacts (fp16, int8)
are not offered yet: an int8 recipe has to be chosen by measurement against the gate first.

Install: ``litert-torch`` pins ``litert-converter``, which pins ``xdsl``, which pins ``typing-extensions < 4.13``
(the rest of cellsdk's stack needs newer): ``scripts/setup.sh`` installs ``litert-torch`` and
``litert-converter`` without their pins and the packages conversion imports beside them (constraints.txt).

Examples:
    >>> from cellsdk.converters import get_converter
    >>> get_converter("litert").file_name("fp32")
    'model.fp32.tflite'
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

from cellsdk.converters.base import Converter, ExportJob, Refused, first_line, plain_tensor_copy, register_converter
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["LiteRtConverter", "write_tflite_metadata"]


def write_tflite_metadata(source: Path, target: Path, text: str, name: str = METADATA_KEY) -> None:
    """Copy the ``.tflite`` at ``source`` to ``target`` with ``text`` stored under ``name`` in its metadata table
    (replacing an entry of that name). The model's operators and weights are unchanged.

    Examples:
        >>> write_tflite_metadata(Path("raw.tflite"), Path("model.fp32.tflite"), '{"arch": "x"}')  # doctest: +SKIP
    """
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(source))
    payload = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    model.metadata = [entry for entry in (model.metadata or [])
                      if (entry.name.decode() if isinstance(entry.name, bytes) else entry.name) != name]
    buffer = schema.BufferT()
    buffer.data = payload
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    flatbuffer_utils.write_model(model, str(target))


@register_converter("litert", suffix=".tflite", precisions=("fp32",), packages=("litert_torch", "ai_edge_litert", "torch"),
                    install="scripts/setup.sh installs it (pip install 'cellsdk[litert]' for the runtime alone)")
class LiteRtConverter(Converter):
    """LiteRT for Android phones, tablets and ARM boards (XNNPACK on the CPU)."""

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        import litert_torch

        model = job.cached("plain-tensor-module", lambda: plain_tensor_copy(job.exported))
        staged = out.with_name(f".{out.name}.raw")
        # litert-torch prints a line per conversion stage and JAX / absl warn on import: cellsdk shows one bar
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                edge = litert_torch.convert(model, (job.example(1),))
                edge.export(str(staged))
            except Exception as err:  # the toolchain raises many types for ops it cannot lower
                with contextlib.suppress(OSError):
                    staged.unlink()
                raise Refused(f"litert-torch cannot convert {job.metadata.arch} ({first_line(err)}); use its ONNX "
                              "or OpenVINO artefacts") from err
        try:
            write_tflite_metadata(staged, out, job.metadata_for(precision).to_json())
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
        return {}

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        staged = path.with_name(f".{path.name}.metadata")
        write_tflite_metadata(path, staged, metadata.to_json())
        os.replace(staged, path)

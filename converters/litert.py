"""LiteRT ``.tflite`` (formerly TensorFlow Lite) through ``litert-torch``: fp32, fp16 and int8, for phones and ARM boards.

``litert_torch.convert`` lowers the same module every format exports (logits, and the ``features`` and ``cams``
outputs the guard and the explanations need, in that order; the file's serving signature names them
``output_0``, ``output_1`` ... in the module's order) with a batch of one. The cellsdk metadata goes into the
flatbuffer's ``metadata`` table under ``cellsdk`` (:func:`write_tflite_metadata`), where the torch-free LiteRT
backend reads it (:func:`cellsdk.backends.litert.read_tflite_metadata`). fp16 and int8 come from the fp32 file
through ``ai-edge-quantizer`` (see :class:`LiteRtConverter`).

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
from cellsdk.converters.int8 import xnnpack_record
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


@register_converter("litert", suffix=".tflite", precisions=("fp32", "fp16", "int8"),
                    packages=("litert_torch", "ai_edge_litert", "ai_edge_quantizer", "torch"),
                    install="scripts/setup.sh installs it (pip install 'cellsdk[litert]' for the runtime alone)")
class LiteRtConverter(Converter):
    """LiteRT for Android phones, tablets and ARM boards (XNNPACK on the CPU).

    fp16 and int8 are made from the fp32 file by ``ai-edge-quantizer``: fp16 stores the weights in float16
    (XNNPACK computes in fp32, or in fp16 where the CPU has it); int8 is its full-integer static recipe
    (``static_wi8_ai8``: per-channel symmetric int8 weights, int8 activations calibrated on the ``--calib``
    images; the model's input and outputs are int8 too, with their scales in the file, which the backend
    applies). Chosen over litert-torch's own pt2e quantizer by measurement on the shipped model (BloodMNIST test
    split, 3,421 images: top-1 agreement with fp32 99.80 against 99.56 %, logit cosine 0.9986 against 0.9975,
    batch-1 2.8 against 3.1 ms on a 2-core AVX2 CPU; ``python -m cellsdk.benchmarks.studies.litert_int8_recipes``).
    """

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        raw = job.cached("litert-fp32", lambda: self.fp32_file(job))
        if precision == "fp32":
            write_tflite_metadata(raw, out, job.metadata_for(precision).to_json())
            return {}
        recipe: dict[str, Any] = {}
        if precision == "fp16":  # a precision like ONNX's and OpenVINO's fp16, not a quantization: nothing recorded
            staged = self.quantized_file(job, raw, precision, None)
        else:
            calibration = job.require_calibration("litert")
            staged = self.quantized_file(job, raw, precision, calibration)
            recipe = {"method": "ai-edge-quantizer static_wi8_ai8 (full integer)", "weights": "int8 per-channel, "
                      "symmetric", "activations": "int8 per-tensor", "io": "int8 input and outputs (scales in the file)",
                      "calibration_images": len(calibration), **xnnpack_record(job.int8_recipe)}
        try:
            write_tflite_metadata(staged, out, job.metadata_for(precision, recipe or None).to_json())
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
        return recipe

    def fp32_file(self, job: ExportJob) -> Path:
        """The fp32 ``.tflite`` without metadata in the job's scratch folder (fp16 and int8 start from it).

        Examples:
            >>> LiteRtConverter().fp32_file(job).name  # doctest: +SKIP
            'litert.fp32.tflite'
        """
        import litert_torch

        model = job.cached("plain-tensor-module", lambda: plain_tensor_copy(job.exported))
        staged = job.workdir / "litert.fp32.tflite"
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
        return staged

    def quantized_file(self, job: ExportJob, raw: Path, precision: str, calibration: Any) -> Path:
        """fp16 or int8 from the fp32 file, through ai-edge-quantizer, into the job's scratch folder.

        Examples:
            >>> converter = LiteRtConverter()
            >>> converter.quantized_file(job, converter.fp32_file(job), "int8", calibration).name  # doctest: +SKIP
            'litert.int8.tflite'
        """
        from ai_edge_quantizer import quantizer, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.qtyping import TFLOperationName

        staged = job.workdir / f"litert.{precision}.tflite"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                if precision == "fp16":
                    tool = quantizer.Quantizer(str(raw))
                    tool.add_weight_only_config(".*", TFLOperationName.ALL_SUPPORTED, 16,
                                                algorithm_key=AlgorithmName.FLOAT_CASTING)
                    result = tool.quantize(enable_progress_report=False)
                else:
                    tool = quantizer.Quantizer(str(raw), recipe.static_wi8_ai8())
                    key, name = _signature_input(raw)
                    ranges = tool.calibrate({key: [{name: image[None]} for image in calibration.arrays]},
                                            num_threads=max(1, min(4, os.cpu_count() or 1)))
                    result = tool.quantize(ranges, enable_progress_report=False)
            except Exception as err:  # the quantizer raises many types for ops it cannot take
                raise Refused(f"ai-edge-quantizer cannot make a LiteRT {precision} {job.metadata.arch} "
                              f"({first_line(err)}); use its fp32 LiteRT or ONNX {precision} artefact") from err
        staged.write_bytes(bytes(result.quantized_model))
        return staged

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        staged = path.with_name(f".{path.name}.metadata")
        write_tflite_metadata(path, staged, metadata.to_json())
        os.replace(staged, path)


def _signature_input(path: Path) -> tuple[str, str]:
    """The serving signature's key and its one input's name in the ``.tflite`` at ``path``."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(path)).get_signature_list()
    key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
    return key, next(iter(signatures[key]["inputs"]))

"""ONNX: fp32 and fp16 exports, int8 by ONNX Runtime static quantization (QDQ, per-channel, calibrated).

The fp32 graph comes from ``torch.onnx.export(dynamo=True)`` (opset 20); fp16
converts its weights and activations with ONNX Runtime's float16 pass, keeping
float32 inputs and outputs; int8 is static QDQ with per-channel S8 weights and
U8 activations, calibrated on real images (dynamic quantization makes CNNs
about 12x slower, so it is not offered). The ``portable`` recipe (default)
quantizes weights to 7 bits (``reduce_range``) so that no CPU class saturates
(see :mod:`cellsdk.converters.int8`); ``vnni`` keeps 8-bit weights. The
quantizer's own messages are summarised in the recipe, not printed. The
metadata goes into ``metadata_props`` under ``cellsdk``.

Examples:
    >>> from cellsdk.converters import get_converter
    >>> get_converter("onnx").precisions
    ('fp32', 'fp16', 'int8')
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.converters.base import Converter, ExportJob, register_converter
from cellsdk.converters.int8 import capture_root_logging, recipe_record, summarise_quantizer_messages
from cellsdk.explain import CAMS_OUTPUT
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["OnnxConverter", "export_fp32_onnx", "only_feeding", "unique_node_names", "write_onnx_metadata"]

log = logging.getLogger("cellsdk")


def export_fp32_onnx(job: ExportJob) -> Path:
    """The fp32 ONNX export of ``job.model`` (made once per job, in its workdir; reused from
    :mod:`cellsdk.converters.export_cache` when the same weights were exported before).

    Examples:
        >>> export_fp32_onnx(job).name  # doctest: +SKIP
        'model.fp32.onnx'
    """

    def make() -> Path:
        import torch

        from cellsdk.converters import export_cache

        path = job.workdir / "fp32.onnx"
        key = export_cache.export_key(job.exported, tuple(job.metadata.outputs), dynamic_batch=job.dynamic_batch,
                                      input_size=job.input_size)
        if export_cache.fetch(key, path):
            return path
        dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if job.dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(job.exported, (job.example(2 if job.dynamic_batch else 1),), dynamo=True,
                                        external_data=False, verbose=False, dynamic_shapes=dynamic,
                                        input_names=["input"], output_names=list(job.metadata.outputs))
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(path))
        export_cache.store(key, path)
        return path

    return job.cached("onnx-fp32", make)


def unique_node_names(model: Any) -> Any:
    """``model`` (an ONNX ModelProto) repaired after ONNX Runtime's float16 pass, which on some graphs (EdgeNeXt)
    casts the same tensor twice with identically named nodes and outputs; ONNX Runtime then refuses to load it.
    A node that repeats an earlier node exactly (operator, inputs, attributes, outputs) computes the same value
    and is dropped; other repeated node names get a numeric suffix.

    Raises:
        Refused: two different nodes define the same value (not repairable here).

    Examples:
        >>> model = unique_node_names(onnx.load("model.fp16.onnx"))  # doctest: +SKIP
    """
    from cellsdk.converters.base import Refused

    seen_names: set[str] = set()
    producers: dict[str, Any] = {}
    kept = []
    for node in model.graph.node:
        earlier = [producers[o] for o in node.output if o in producers]
        if earlier:
            first = earlier[0]
            if (first.op_type == node.op_type and list(first.input) == list(node.input)
                    and list(first.output) == list(node.output) and list(first.attribute) == list(node.attribute)):
                continue  # the same cast again: the value already exists
            raise Refused(f"the float16 pass defines {node.output[0]!r} twice with different nodes; use fp32 or int8")
        if node.name:
            name, counter = node.name, 1
            while name in seen_names:
                name, counter = f"{node.name}_{counter}", counter + 1
            node.name = name
            seen_names.add(name)
        for output in node.output:
            producers[output] = node
        kept.append(node)
    if len(kept) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return model


def only_feeding(path: Path, output: str) -> list[str]:
    """Names of the nodes of the ONNX file at ``path`` that compute graph output ``output`` and nothing else
    (e.g. the class-activation-map convolution, which int8 quantization leaves in float); [] without it.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> len(only_feeding(default_model_path(), "cams")) >= 1
        True
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if output not in {o.name for o in graph.output}:
        return []
    producer = {name: node for node in graph.node for name in node.output}

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    others = set().union(*(ancestors(o.name) for o in graph.output if o.name != output))
    return sorted(ancestors(output) - others)


def write_onnx_metadata(source: Path, target: Path, metadata: ModelMetadata) -> None:
    """Copy an ONNX model to ``target`` with the cellsdk metadata in ``metadata_props``.

    Examples:
        >>> write_onnx_metadata("model.onnx", "model.with-metadata.onnx", metadata)  # doctest: +SKIP
    """
    import onnx

    proto = onnx.load(str(source))
    kept = {p.key: p.value for p in proto.metadata_props if p.key != METADATA_KEY}
    onnx.helper.set_model_props(proto, {**kept, METADATA_KEY: metadata.to_json()})
    onnx.save(proto, str(target))


class _Reader:
    """Feeds calibration batches to ONNX Runtime's quantizer."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # pragma: no cover - only some ORT versions call it
        pass


@register_converter("onnx", suffix=".onnx", precisions=("fp32", "fp16", "int8"), packages=("onnx", "onnxscript"),
                    install="pip install 'cellsdk[convert]'")
class OnnxConverter(Converter):
    """ONNX for ONNX Runtime (and anything else that reads ONNX)."""

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        fp32 = export_fp32_onnx(job)
        if precision == "fp32":
            write_onnx_metadata(fp32, out, job.metadata_for("fp32"))
            return {}
        if precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = unique_node_names(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True))
            staged = job.workdir / "fp16.onnx"
            onnx.save(half, str(staged))
            write_onnx_metadata(staged, out, job.metadata_for("fp16"))
            return {}
        return self._int8(job, fp32, out)

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        staged = path.with_name(f".{path.name}.metadata")
        write_onnx_metadata(path, staged, metadata)
        os.replace(staged, path)

    def _int8(self, job: ExportJob, fp32: Path, out: Path) -> dict[str, Any]:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        calibration = job.require_calibration("onnx")
        prepared = job.workdir / "int8-pre.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - the pre-pass is an optimisation; quantize the plain graph without it
            shutil.copyfile(fp32, prepared)
        name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        batch = 1 if not job.dynamic_batch else 16
        staged = job.workdir / "int8.onnx"
        portable = job.int8_recipe == "portable"
        recipe = {"method": "onnxruntime static quantization", "format": "QDQ", "per_channel": True,
                  "activations": "uint8", "weights": "int8, 7-bit range (reduce_range)" if portable else "int8",
                  "reduce_range": portable, "calibration": "minmax", "calibration_images": len(calibration),
                  **recipe_record(job.int8_recipe)}
        kept_float = only_feeding(prepared, CAMS_OUTPUT)  # class activation maps: fp32 from the int8 feature maps
        if kept_float:
            recipe["float_nodes"] = kept_float
        with capture_root_logging() as records:
            quantize_static(str(prepared), str(staged), _Reader(name, list(calibration.batches(batch))),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=portable,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept_float)
        notes = summarise_quantizer_messages(records)
        if notes:
            recipe["quantizer_messages"] = notes
            log.info("onnx int8: quantizer %s", ", ".join(f"{kind}: {n}" for kind, n in notes.items()))
        write_onnx_metadata(staged, out, job.metadata_for("int8", recipe))
        return recipe

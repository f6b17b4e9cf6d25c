"""ExecuTorch ``.pte`` programs (XNNPACK delegate): fp32 and int8, for phones and boards that run PyTorch's on-device runtime.

``torch.export`` of the same module every format exports (logits, ``features``, ``cams``; batch of one), lowered
with ``to_edge_transform_and_lower`` and the XNNPACK partitioner. A ``.pte`` has no metadata slot, so the
program gets one of cellsdk's (:mod:`cellsdk.backends.executorch`): a constant method ``cellsdk_metadata``
returning the JSON in a zero-padded byte tensor, whose bytes lie contiguously in the file and are rewritten in
place (:func:`write_pte_metadata`; room for 1 MiB more than the first document, or twice it; a larger one asks
for a re-conversion).
int8 through ``XNNPACKQuantizer`` (see :class:`ExecuTorchConverter`).

Examples:
    >>> from cellsdk.converters import get_converter
    >>> get_converter("executorch").file_name("fp32")
    'model.fp32.pte'
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

from cellsdk.backends.executorch import PTE_HEADER, PTE_MAGIC, find_pte_metadata
from cellsdk.converters.base import Converter, ExportJob, Refused, first_line, plain_tensor_copy, register_converter
from cellsdk.converters.int8 import pt2e_calibrated, xnnpack_record
from cellsdk.errors import ConfigError, MetadataError
from cellsdk.metadata import ModelMetadata

__all__ = ["ExecuTorchConverter", "metadata_slot", "write_pte_metadata"]

#: the constant method that holds the metadata slot
METHOD = "cellsdk_metadata"
#: room the slot keeps beyond the first document: what verification adds later (the test vectors, up to 400 KB,
#: their guard scores, the CPU records; the guard's statistics are there from the start)
SLOT_HEADROOM = 1 << 20


def metadata_slot(text: str, capacity: int | None = None) -> bytes:
    """The slot's bytes: magic, capacity and length, the JSON, zero padding (default capacity: the JSON plus
    :data:`SLOT_HEADROOM`, or twice it).

    Examples:
        >>> len(metadata_slot("{}", 8)), len(metadata_slot("{}")) - 32
        (40, 1048578)
    """
    payload = text.encode("utf-8")
    capacity = max(2 * len(payload), len(payload) + SLOT_HEADROOM) if capacity is None else capacity
    if len(payload) > capacity:
        raise MetadataError(f"the metadata ({len(payload):,} bytes) no longer fits the program's slot "
                            f"({capacity:,} bytes): re-convert the checkpoint")
    return PTE_MAGIC + PTE_HEADER.pack(capacity, len(payload)) + payload + bytes(capacity - len(payload))


def write_pte_metadata(path: Path, text: str) -> None:
    """Rewrite the metadata in the ``.pte`` at ``path`` in place (atomically, through a staged copy).

    Raises:
        MetadataError: the program has no cellsdk slot, or the text does not fit it.

    Examples:
        >>> write_pte_metadata(Path("model.fp32.pte"), '{"arch": "x"}')  # doctest: +SKIP
    """
    data = bytearray(path.read_bytes())
    slot = find_pte_metadata(bytes(data), path)
    if slot is None:
        raise MetadataError(f"{path}: has no cellsdk metadata slot (not converted by cellsdk-convert)")
    offset, _, capacity = slot
    start = offset - PTE_HEADER.size - len(PTE_MAGIC)
    replacement = metadata_slot(text, capacity)
    data[start:start + len(replacement)] = replacement
    staged = path.with_name(f".{path.name}.metadata")
    staged.write_bytes(bytes(data))
    os.replace(staged, path)


@register_converter("executorch", suffix=".pte", precisions=("fp32", "int8"), packages=("executorch", "torch"),
                    install="pip install 'cellsdk[executorch]'")
class ExecuTorchConverter(Converter):
    """ExecuTorch for phones and boards (XNNPACK on the CPU).

    int8 is PyTorch 2 export quantization with ExecuTorch's ``XNNPACKQuantizer`` (per-channel symmetric int8
    weights, int8 activations, calibrated on the ``--calib`` images through ``prepare_pt2e`` / ``convert_pt2e``),
    then the XNNPACK partitioner: the program takes and returns float32 (its quantize / dequantize steps are
    inside it).
    """

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        import torch

        model = job.cached("plain-tensor-module", lambda: plain_tensor_copy(job.exported))
        recipe: dict[str, Any] = {}
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                exported = torch.export.export(model, (job.example(1),))
                if precision == "int8":
                    calibration = job.require_calibration("executorch")
                    exported = torch.export.export(_quantized(exported, calibration), (job.example(1),))
                    recipe = {"method": "PT2E static quantization, XNNPACKQuantizer", "weights": "int8 per-channel, "
                              "symmetric", "activations": "int8 per-tensor", "io": "float32 (quantized inside)",
                              "calibration_images": len(calibration), **xnnpack_record(job.int8_recipe)}
                text = job.metadata_for(precision, recipe or None).to_json()
                slot = torch.tensor(list(metadata_slot(text)), dtype=torch.uint8)
                program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                                      constant_methods={METHOD: slot}).to_executorch()
            except Exception as err:  # the exporter and the lowering raise many types for what they cannot take
                if isinstance(err, ConfigError):
                    raise
                raise Refused(f"ExecuTorch cannot convert {job.metadata.arch} to {precision} ({first_line(err)}); "
                              "use its ONNX or OpenVINO artefacts") from err
        out.write_bytes(program.buffer)
        if find_pte_metadata(out.read_bytes(), out) is None:  # the slot must lie in the file as written
            raise Refused("ExecuTorch stored the metadata slot in a form cellsdk cannot read back; use its ONNX "
                          "or OpenVINO artefacts")
        return recipe

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        write_pte_metadata(path, metadata.to_json())


def _quantized(exported: Any, calibration: Any) -> Any:
    """The exported program's module with XNNPACK's int8 quantize / dequantize pairs, calibrated image by image."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return pt2e_calibrated(exported.module(), quantizer, calibration)

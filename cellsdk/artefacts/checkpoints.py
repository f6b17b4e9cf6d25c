"""Reading a cellsdk checkpoint's metadata without torch.

A cellsdk checkpoint is a ``.safetensors`` file whose header metadata holds
the :class:`~cellsdk.metadata.ModelMetadata` JSON under ``"cellsdk"``. The
header is JSON after an 8-byte length, so it is read here in pure Python.

Examples:
    >>> read_checkpoint_metadata("run/best.safetensors").labels  # doctest: +SKIP
    ('basophil', 'eosinophil', ...)
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cellsdk._io import parse_json
from cellsdk.errors import CheckpointError, MetadataError
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["CHECKPOINT_FORMAT_TAG", "CHECKPOINT_SUFFIX", "is_checkpoint", "read_checkpoint_metadata"]

CHECKPOINT_SUFFIX = ".safetensors"
CHECKPOINT_FORMAT_TAG = "cellsdk-checkpoint"
_MAX_HEADER = 100 * 1024 * 1024


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a training checkpoint (run in PyTorch) rather than a deployed artefact.

    Examples:
        >>> is_checkpoint("runs/a/best.safetensors"), is_checkpoint("model.int8.onnx")
        (True, False)
    """
    return Path(path).suffix.lower() == CHECKPOINT_SUFFIX


def read_checkpoint_metadata(path: str | os.PathLike) -> ModelMetadata:
    """Read a checkpoint's metadata from its header without loading weights (torch-free).

    Raises:
        CheckpointError: the file is missing, not a safetensors file, or carries no cellsdk metadata.
        MetadataError: the metadata is malformed.

    Examples:
        >>> read_checkpoint_metadata("models/bloodmnist_effnet_lite0_128.safetensors").arch  # doctest: +SKIP
        'tf_efficientnet_lite0'
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", size_bytes)
            if size <= 0 or size > _MAX_HEADER or size > path.stat().st_size - 8:
                raise ValueError("bad header size")
            header = parse_json(handle.read(size))
            file_size = path.stat().st_size
    except (ValueError, UnicodeDecodeError, OSError):
        raise CheckpointError(
            f"{path}: not a cellsdk checkpoint (expected a .safetensors file written by cellsdk-train)"
        ) from None
    _check_tensor_bytes(path, header, file_size - 8 - size)
    extra = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(extra, dict) or METADATA_KEY not in extra:
        raise CheckpointError(
            f"{path}: safetensors file without cellsdk metadata; train with cellsdk-train, or load the "
            "weights with --pretrained PATH"
        )
    try:
        return ModelMetadata.from_json(extra[METADATA_KEY])
    except MetadataError as err:
        raise MetadataError(f"{path}: {err}") from None


def _check_tensor_bytes(path: Path, header: object, available: int) -> None:
    """Refuse a checkpoint whose tensor data is shorter or longer than its header says (truncated or padded)."""
    if not isinstance(header, dict):
        return
    try:
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(f"{path}: corrupt checkpoint header (tensor entries without data offsets)") from None
    expected = max(ends, default=0)
    if expected != available:
        raise CheckpointError(
            f"{path}: corrupt checkpoint: its header describes {expected:,} bytes of weights but the file holds "
            f"{available:,} (truncated or damaged copy); copy it again or re-train"
        )

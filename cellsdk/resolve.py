"""How ``Classifier.load`` reconciles a model file with its metadata (and the caller's overrides).

Example:
    >>> from cellsdk.resolve import resolve_metadata
    >>> callable(resolve_metadata)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellsdk.backends import Backend
from cellsdk.errors import MetadataError, UnsupportedFormatError
from cellsdk.metadata import ModelMetadata, Preprocessing

__all__ = ["check_shapes", "resolve_metadata"]


def resolve_metadata(path: Path, backend: Backend, labels: Sequence[str] | None,
                      preprocessing: Preprocessing | Mapping[str, Any] | None) -> ModelMetadata:
    """The artefact's own metadata, with the caller's labels / preprocessing laid over it."""
    if isinstance(preprocessing, Mapping):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if backend.metadata_json:
        try:
            metadata = ModelMetadata.from_json(backend.metadata_json)
        except MetadataError as err:
            raise MetadataError(f"{path}: {err}") from None
        changes: dict[str, Any] = {}
        if labels is not None:
            changes["labels"] = tuple(labels)
        if preprocessing is not None:
            changes["preprocessing"] = preprocessing
        return metadata.replace(**changes) if changes else metadata
    if labels is None or preprocessing is None:
        raise MetadataError(
            f"{path}: carries no cellsdk metadata; pass labels=[...] and preprocessing=Preprocessing(...) "
            "to load it, or convert it with cellsdk-convert"
        )
    return ModelMetadata(labels=tuple(labels), arch="unknown", preprocessing=preprocessing)


def check_shapes(path: Path, backend: Backend, metadata: ModelMetadata) -> None:
    """Refuse metadata that contradicts the model itself."""
    shape = backend.input_shape
    if len(shape) != 4 or shape[1] not in (None, 3):
        raise UnsupportedFormatError(f"{path}: expected an N x 3 x H x W image input, the model takes {shape}")
    size = metadata.preprocessing.input_size
    if any(side is not None and side != size for side in shape[2:]):
        raise MetadataError(
            f"{path}: the model takes {shape[2]}x{shape[3]} inputs but its metadata says {size}x{size}; "
            "fix the preprocessing"
        )
    if backend.output_count is not None and backend.output_count < len(metadata.outputs):
        raise MetadataError(
            f"{path}: the model has {backend.output_count} output(s) but its metadata lists {len(metadata.outputs)} "
            f"({', '.join(metadata.outputs)}); re-convert it with cellsdk-convert"
        )
    if backend.num_outputs is not None and backend.num_outputs != metadata.num_classes:
        raise MetadataError(
            f"{path}: the model has {backend.num_outputs} outputs but the metadata lists "
            f"{metadata.num_classes} labels; pass the right labels"
        )

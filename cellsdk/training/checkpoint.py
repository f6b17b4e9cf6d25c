"""Checkpoints: safetensors weights with the model's metadata in the same file.

A cellsdk checkpoint is a ``.safetensors`` file whose header metadata holds
the :class:`~cellsdk.metadata.ModelMetadata` JSON under ``"cellsdk"``. Loading
never unpickles anything. :func:`read_checkpoint_metadata` reads only the
header (in :mod:`cellsdk.artefacts.checkpoints`), so it works without torch.

Examples:
    >>> meta = read_checkpoint_metadata("run/best.safetensors")  # doctest: +SKIP
    >>> meta.labels  # doctest: +SKIP
    ('basophil', 'eosinophil', ...)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cellsdk._io import atomic_path
from cellsdk.artefacts.checkpoints import CHECKPOINT_FORMAT_TAG, CHECKPOINT_SUFFIX, read_checkpoint_metadata
from cellsdk.errors import BackendNotInstalledError, CheckpointError
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["CHECKPOINT_SUFFIX", "load_checkpoint", "read_checkpoint_metadata", "save_checkpoint"]


def save_checkpoint(path: str | os.PathLike, model: Any, metadata: ModelMetadata) -> Path:
    """Write the model's weights and metadata to one safetensors file, atomically.

    Examples:
        >>> save_checkpoint("run/best.safetensors", model, meta)  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: metadata.to_json(), "format": CHECKPOINT_FORMAT_TAG})
    return target


def load_checkpoint(path: str | os.PathLike, *, device: str = "cpu") -> tuple[Any, ModelMetadata]:
    """Rebuild the model from a checkpoint, in eval mode, with its metadata.

    Raises:
        CheckpointError: not a checkpoint, corrupt, or weights that do not fit the architecture.

    Examples:
        >>> model, meta = load_checkpoint("run/best.safetensors")  # doctest: +SKIP
    """
    metadata = read_checkpoint_metadata(path)
    try:
        import timm
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise BackendNotInstalledError("torch/timm are not installed: pip install 'cellsdk[train]'") from None
    if not timm.is_model(metadata.arch):
        raise CheckpointError(f"{path}: architecture {metadata.arch!r} is unknown to this timm; upgrade timm")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from None
    from cellsdk.training.shapes import shape_like, size_kwargs

    model = timm.create_model(metadata.arch, num_classes=metadata.num_classes,
                              **size_kwargs(metadata.arch, metadata.preprocessing.input_size))
    if metadata.training.get("pruning"):  # whole channels were removed: shape the layers to the weights first
        shape_like(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {metadata.arch} ({first})") from None
    return model.to(device).eval(), metadata

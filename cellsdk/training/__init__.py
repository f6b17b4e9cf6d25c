"""Training and evaluation (needs the ``[train]`` extra: torch, timm, safetensors, matplotlib).

``import cellsdk`` does not import this package; importing it loads torch.

Examples:
    >>> from cellsdk.training import TrainConfig, train, evaluate  # doctest: +SKIP
    >>> result = train("samples/bloodmnist_128", "runs/demo", TrainConfig.quick())  # doctest: +SKIP
"""

from __future__ import annotations

from cellsdk.errors import BackendNotInstalledError

try:
    import safetensors  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise BackendNotInstalledError(
        f"training needs torch, timm and safetensors ({_err.name} is missing): pip install 'cellsdk[train]'"
    ) from None

from cellsdk.training.adaptation import AdaptConfig, AdaptResult, adapt
from cellsdk.training.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from cellsdk.training.combined import train_combined
from cellsdk.training.config import AugmentConfig, TrainConfig, parse_crop
from cellsdk.training.evaluate import evaluate
from cellsdk.training.models import PretrainedSource, create_model, load_weights_file
from cellsdk.training.trainer import TrainResult, resume_training, train

__all__ = [
    "AdaptConfig",
    "AdaptResult",
    "AugmentConfig",
    "PretrainedSource",
    "TrainConfig",
    "TrainResult",
    "adapt",
    "create_model",
    "evaluate",
    "load_checkpoint",
    "load_weights_file",
    "parse_crop",
    "read_checkpoint_metadata",
    "resume_training",
    "save_checkpoint",
    "train",
    "train_combined",
]

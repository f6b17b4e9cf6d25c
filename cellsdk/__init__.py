"""cellsdk: train, convert, verify, run and benchmark microscopy cell classifiers.

``import cellsdk`` is light: it loads numpy and Pillow, never torch. Models run
through :class:`Classifier`; training and evaluation live in
:mod:`cellsdk.training`, imported on first use.

Examples:
    >>> import cellsdk
    >>> cellsdk.Preprocessing(input_size=128).input_size
    128
    >>> clf = cellsdk.Classifier.load("model.onnx")  # doctest: +SKIP
    >>> clf.predict("cell.jpg").label  # doctest: +SKIP
    'neutrophil'
    >>> cellsdk.count(["fields/"], "runs/count").summary["differential"][0]  # doctest: +SKIP
    {'label': 'basophil', 'cells': 1, 'share': 0.01, 'ci95': [...], 'flagged': 0}
"""

from __future__ import annotations

from typing import Any

from cellsdk import _compat
from cellsdk._version import __version__
from cellsdk.errors import (
    BackendNotInstalledError,
    CellSDKError,
    CheckpointError,
    ConfigError,
    CpuVerificationWarning,
    DatasetError,
    DeviceUnavailableError,
    InvalidImageError,
    MetadataError,
    ModelNotFoundError,
    ParityError,
    PlatformNotSupportedError,
    SelfCheckError,
    SelfCheckWarning,
    TrainingError,
    UnsupportedFormatError,
    UnverifiedCpuError,
)
from cellsdk.metadata import METADATA_KEY, ModelMetadata, Preprocessing

__all__ = [
    "METADATA_KEY",
    "BackendNotInstalledError",
    "CellSDKError",
    "CheckpointError",
    "Classifier",
    "ConfigError",
    "CpuVerificationWarning",
    "DatasetError",
    "DeviceUnavailableError",
    "InvalidImageError",
    "MetadataError",
    "ModelMetadata",
    "ModelNotFoundError",
    "ParityError",
    "PlatformNotSupportedError",
    "Prediction",
    "Preprocessing",
    "SelfCheckError",
    "SelfCheckWarning",
    "TrainingError",
    "UnsupportedFormatError",
    "UnverifiedCpuError",
    "__version__",
    "count",
    "load_dataset",
    "preprocess",
]

_compat.install()  # old module paths (cellsdk.cpu, cellsdk.jobs ...) keep working for one release, with a warning


def __getattr__(name: str) -> Any:
    """Import the heavier helpers on first use, keeping ``import cellsdk`` fast."""
    if name in ("Classifier", "Prediction"):
        from cellsdk import classifier

        return getattr(classifier, name)
    if name == "load_dataset":
        from cellsdk.datasets import load_dataset

        return load_dataset
    if name == "preprocess":
        from cellsdk.preprocessing import preprocess

        return preprocess
    if name == "count":
        from cellsdk.fields.count import count

        return count
    raise AttributeError(f"module 'cellsdk' has no attribute {name!r}")

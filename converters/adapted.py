"""Converting an adapted model: what ``cellsdk adapt`` writes to ``OUT/converted`` and checks it on.

An adapted model is converted as ``cellsdk-convert --quantize int8`` would, over every lab
(:mod:`cellsdk.converters.labs`): to the formats a lab runs first (:data:`ADAPT_FORMATS`), verified on the default
CPU classes with the emulated ones on a class-balanced sample (:func:`adapt_cpu_targets`).

Examples:
    >>> ADAPT_FORMATS
    ('onnx',)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsdk.converters.guard import GuardConfig
from cellsdk.converters.labs import LabSource
from cellsdk.converters.pipeline import ConvertConfig, convert
from cellsdk.converters.targets import DEFAULT_TARGETS, CpuTargets

__all__ = ["ADAPT_EMULATED_PER_CLASS", "ADAPT_FORMATS", "adapt_cpu_targets", "convert_adapted"]

#: what an adapted model is converted to unless asked otherwise: what a lab runs first (the rest: cellsdk-convert)
ADAPT_FORMATS = ("onnx",)
#: images per class an adapted int8 artefact is checked on under each emulated CPU class (QEMU runs ~40x slower
#: than the host: 16 per class keeps per-class recall gated at a few minutes a class instead of twenty)
ADAPT_EMULATED_PER_CLASS = 16


def adapt_cpu_targets(names: str | None = None) -> CpuTargets:
    """The CPU classes an adapted model is verified on (default: cellsdk-convert's), emulated ones on a
    class-balanced sample of :data:`ADAPT_EMULATED_PER_CLASS` images per class.

    Examples:
        >>> adapt_cpu_targets("native,haswell").images_per_class
        16
    """
    return CpuTargets.parse(names if names is not None else DEFAULT_TARGETS, images_per_class=ADAPT_EMULATED_PER_CLASS)


def convert_adapted(checkpoint: str | Path, out_dir: str | Path, *, replay: Any, labs: Sequence[LabSource],
                    options: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert an adapted checkpoint as ``cellsdk-convert --quantize int8`` would, over every lab: to
    :data:`ADAPT_FORMATS` (``options={"formats": ()}``: every format), verified on the default CPU classes with the
    emulated ones on a class-balanced sample (:func:`adapt_cpu_targets`).

    ``replay`` (a :class:`LabSource`: the original training data) is the calibration and verification data, as
    for ``cellsdk-convert --calib``; the guard is fitted over it and ``labs`` (keeping 99 % of each lab's
    held-out cells: an adapted model answers both), and every artefact is checked on each lab's held-out cells.
    The guard's ``uncertain`` status is off (``target_accuracy=0``): its confidence threshold would be set on a
    new lab's dozen held-out cells, and flagged most of the lab's correct answers when measured; the
    out-of-distribution score and the input checks still speak. Its statistics come from 2,000 training images
    (250 per class; ``cellsdk-convert`` takes 4,000): the first minute a lab waits for was that forward pass.

    Returns:
        The conversion manifest.

    Examples:
        >>> convert_adapted("runs/labB/best.safetensors", "runs/labB/converted",
        ...                 replay=LabSource("bloodmnist_128", cropped=True), labs=[LabSource("labB")])  # doctest: +SKIP
    """
    settings: dict[str, Any] = {"formats": ADAPT_FORMATS, "cpu_targets": adapt_cpu_targets(),
                                "precisions": ("int8",), "calib": replay.path, "data_cropped": replay.cropped,
                                "labels": replay.labels, "labs": tuple(labs),
                                "guard": GuardConfig(retention=0.99, target_accuracy=0.0, train_images=2000)}
    settings.update(options or {})
    return convert(checkpoint, out_dir, ConvertConfig(**settings), progress=progress).manifest

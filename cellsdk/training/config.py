"""Training configuration: frozen dataclasses with named presets.

Examples:
    >>> from cellsdk.training.config import TrainConfig
    >>> cfg = TrainConfig.quick(epochs=1)
    >>> cfg.epochs, cfg.augment.hflip
    (1, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cellsdk._validate import require_float, require_int
from cellsdk.errors import ConfigError
from cellsdk.metadata import CROP_MODES, RESIZE_FILTERS

__all__ = ["AMP_MODES", "AugmentConfig", "TrainConfig", "parse_crop"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied to the prepared (cropped, resized) image.

    Cells have no up or down, so flips and right-angle rotations are safe;
    the rest are kept mild because stain colour carries class information.

    Examples:
        >>> AugmentConfig.none().enabled
        False
    """

    hflip: bool = True
    vflip: bool = True
    rotate90: bool = True
    rotation_degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    stain: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    jpeg: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale {self.scale} must be (low, high) with 0 < low <= high")
        for name in ("rotation_degrees", "translate", "brightness", "contrast", "saturation", "hue", "stain"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.hue > 0.5 or self.translate > 0.5 or self.stain > 0.5:
            raise ConfigError("augment.hue, augment.translate and augment.stain must be <= 0.5")
        for name in ("blur", "noise", "jpeg"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability: use a value in [0, 1], got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return self != AugmentConfig.none()

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation.

        Examples:
            >>> AugmentConfig.none().hflip
            False
        """
        return cls(hflip=False, vflip=False, rotate90=False, rotation_degrees=0.0, scale=(1.0, 1.0),
                   translate=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)

    @classmethod
    def light(cls) -> AugmentConfig:
        """Flips and right-angle rotations only: geometry, no colour change.

        Examples:
            >>> AugmentConfig.light().rotate90, AugmentConfig.light().brightness
            (True, 0.0)
        """
        return cls(rotation_degrees=0.0, scale=(1.0, 1.0), translate=0.0, brightness=0.0,
                   contrast=0.0, saturation=0.0, hue=0.0)

    @classmethod
    def microscopy(cls) -> AugmentConfig:
        """The default: flips, rotations, mild affine and mild colour jitter.

        Examples:
            >>> AugmentConfig.microscopy() == AugmentConfig()
            True
        """
        return cls()

    @classmethod
    def stain_robust(cls) -> AugmentConfig:
        """For data from several labs: the default plus stain jitter in HED space and a wider scale range.

        Examples:
            >>> AugmentConfig.stain_robust().stain > 0
            True
        """
        return cls(scale=(0.8, 1.25), stain=0.05)

    @classmethod
    def cross_lab(cls) -> AugmentConfig:
        """For a model that must hold in labs it never saw: strong stain and colour jitter, a wide scale range, and
        another camera's defects (defocus blur, sensor noise, JPEG re-compression, each on a share of the images).

        Examples:
            >>> AugmentConfig.cross_lab().stain > AugmentConfig.stain_robust().stain, AugmentConfig.cross_lab().jpeg
            (True, 0.3)
        """
        return cls(rotation_degrees=30.0, scale=(0.75, 1.33), translate=0.08, brightness=0.2, contrast=0.2,
                   saturation=0.2, hue=0.04, stain=0.12, blur=0.25, noise=0.25, jpeg=0.3)

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """A preset by name: ``none``, ``light``, ``microscopy``, ``stain`` or ``cross-lab``.

        Examples:
            >>> AugmentConfig.preset("light") == AugmentConfig.light()
            True
        """
        presets = {"none": cls.none, "light": cls.light, "microscopy": cls.microscopy, "stain": cls.stain_robust,
                   "cross-lab": cls.cross_lab}
        if name not in presets:
            raise ConfigError(f"unknown augmentation preset {name!r}: use one of {', '.join(presets)}")
        return presets[name]()


def parse_crop(text: str) -> tuple[str, float]:
    """Parse a crop option: ``none``, a fraction like ``0.875``, or pixels like ``200px``.

    Examples:
        >>> parse_crop("200px"), parse_crop("0.875"), parse_crop("none")
        (('pixels', 200.0), ('fraction', 0.875), ('none', 1.0))
    """
    value = text.strip().lower()
    if value in ("", "none", "1", "1.0"):
        return "none", 1.0
    try:
        if value.endswith("px"):
            pixels = float(value[:-2])
            if pixels >= 1 and pixels == int(pixels):
                return "pixels", pixels
        else:
            fraction = float(value)
            if 0 < fraction <= 1:
                return "fraction", fraction
    except ValueError:
        pass
    raise ConfigError(f"crop {text!r} not understood: use none, a fraction such as 0.875, or pixels such as 200px")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        arch: a timm model name.
        pretrained: ``"auto"`` (hub when online, else a known local source),
            ``"none"``, or the path of a weights file.
        input_size: side of the square model input.
        crop_mode, crop_value: the centre crop applied to raw images (see
            :class:`~cellsdk.metadata.Preprocessing`).
        data_cropped: the training images were already cut with that crop
            (e.g. ``bloodmnist_128``), so training skips it while the model's
            metadata keeps it for raw microscope images.
        resize_filter: Pillow filter for the resize.
        labels: class names or a known label map for the dataset.
        epochs, batch_size, lr, weight_decay: the optimisation basics (AdamW).
        warmup_epochs: linear warm-up before the cosine decay.
        min_lr_ratio: the cosine schedule's floor, as a share of ``lr``.
        label_smoothing: cross-entropy label smoothing.
        accumulate: micro-batches per optimiser step.
        clip_grad_norm: gradient-norm clip (0 turns it off).
        amp: mixed precision: ``auto`` (bf16 on CPUs with bf16, fp16 on CUDA), ``off``, ``bf16``, ``fp16``.
        channels_last: use the channels-last memory format.
        freeze_epochs: epochs to train the classifier head alone before unfreezing.
        class_weights: ``none`` or ``balanced`` (inverse class frequency).
        augment: training augmentation.
        patience: stop after this many epochs without a better validation macro-F1 (0 never stops).
        seed: seeds shuffling, augmentation, dropout and the dataset split.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        workers: data-loading worker processes.
        max_steps_per_epoch: cap on optimiser steps per epoch (smoke tests, quick demos).
        val_fraction: for data without a val split, the share of each training class set aside as
            validation (seeded by ``seed``; recorded in the checkpoint so conversion and evaluation carve
            the same images). None: the data must have its own val split.
        check_duplicates: before training, hash every image and warn about validation / test images that
            copy a training image (exact, re-encoded, flipped or rotated; see :mod:`cellsdk.training.duplicates`).
    """

    arch: str = "efficientnet_lite0"
    pretrained: str = "auto"
    input_size: int = 128
    crop_mode: str = "none"
    crop_value: float = 1.0
    data_cropped: bool = False
    resize_filter: str = "bilinear"
    labels: str | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    accumulate: int = 1
    clip_grad_norm: float = 2.0
    amp: str = "auto"
    channels_last: bool = True
    freeze_epochs: int = 0
    class_weights: str = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig.microscopy)
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    max_steps_per_epoch: int | None = None
    val_fraction: float | None = None
    check_duplicates: bool = True
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    distill_temperature: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        positive = {"input_size": self.input_size, "epochs": self.epochs, "batch_size": self.batch_size,
                    "accumulate": self.accumulate}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.clip_grad_norm < 0:
            raise ConfigError("weight_decay, warmup_epochs and clip_grad_norm must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp {self.amp!r} is unknown: use one of {', '.join(AMP_MODES)}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise ConfigError(f"class_weights {self.class_weights!r} is unknown: use none or balanced")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode {self.crop_mode!r} is unknown: use one of {', '.join(CROP_MODES)}")
        if self.resize_filter not in RESIZE_FILTERS:
            raise ConfigError(f"resize_filter {self.resize_filter!r} is unknown: use one of {RESIZE_FILTERS}")
        if self.freeze_epochs < 0 or self.patience < 0 or self.workers < 0:
            raise ConfigError("freeze_epochs, patience and workers must be >= 0")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("max_steps_per_epoch must be >= 1 when set")
        require_int("seed", self.seed, minimum=0, maximum=2**32 - 1)
        require_float("val_fraction", self.val_fraction, minimum=0, exclusive=True, maximum=0.9, optional=True)

    @classmethod
    def quick(cls, **overrides: Any) -> TrainConfig:
        """A short run for demos and smoke tests: few epochs, light augmentation.

        Examples:
            >>> TrainConfig.quick().epochs < TrainConfig.standard().epochs
            True
        """
        base = {"epochs": 3, "batch_size": 32, "warmup_epochs": 0.5, "augment": AugmentConfig.light()}
        return cls(**{**base, **overrides})

    @classmethod
    def standard(cls, **overrides: Any) -> TrainConfig:
        """The reference fine-tuning recipe (the defaults).

        Examples:
            >>> TrainConfig.standard() == TrainConfig()
            True
        """
        return cls(**overrides)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed.

        Examples:
            >>> TrainConfig().replace(epochs=5).epochs
            5
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        Examples:
            >>> TrainConfig().to_dict()["arch"]
            'efficientnet_lite0'
        """
        out = dataclasses.asdict(self)
        out["augment"]["scale"] = list(self.augment.scale)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (e.g. a run folder's ``config.json``).

        Examples:
            >>> TrainConfig.from_dict(TrainConfig.quick().to_dict()) == TrainConfig.quick()
            True
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"training config has unknown fields: {', '.join(unknown)}")
        return cls(**dict(data))

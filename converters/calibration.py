"""Real images for calibration and verification, through the model's own preprocessing.

:func:`calibration_set` draws a seeded sample stratified by class from the
train split of a dataset; :func:`evaluation_set` takes held-out images (by
default the validation split). Both preprocess with the model's metadata, so
the quantizer calibrates on what the runtime will feed. The list of images
used is hashed and recorded. Too few calibration images, or calibration
images that are also evaluation images, is an error unless forced.

Examples:
    >>> calib = calibration_set("data/bloodmnist_128", metadata, samples=256, data_cropped=True)  # doctest: +SKIP
    >>> calib.arrays.shape, calib.sha256[:8]  # doctest: +SKIP
    ((256, 3, 128, 128), '3f1c...')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cellsdk.datasets import Split, load_dataset, validation_carve
from cellsdk.errors import ConfigError, DatasetError
from cellsdk.metadata import ModelMetadata
from cellsdk.preprocessing import preprocess

__all__ = ["MIN_CALIBRATION_IMAGES", "ImageSet", "calibration_set", "evaluation_set"]

#: Fewer calibration images than this is refused unless forced.
MIN_CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images with their labels (in the model's label order) and identities.

    Attributes:
        arrays: float32 ``N x 3 x H x W``, exactly what the runtime feeds the model.
        targets: label indices into the model's labels.
        ids: one identity per image (its path, or ``file[split][i]``).
        source: the dataset.
        split: the split the images came from.
        seed: the sampling seed (None when the whole split is used).
    """

    arrays: np.ndarray
    targets: np.ndarray
    ids: tuple[str, ...]
    source: str
    split: str
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sha256(self) -> str:
        """Hash of the ordered list of image identities."""
        return hashlib.sha256("\n".join(self.ids).encode("utf-8")).hexdigest()

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """The arrays in batches of ``size``.

        Examples:
            >>> images = ImageSet(np.zeros((5, 3, 8, 8), np.float32), np.zeros(5, int), tuple("abcde"), "samples", "test")
            >>> [len(batch) for batch in images.batches(2)]
            [2, 2, 1]
        """
        for start in range(0, len(self.arrays), size):
            yield self.arrays[start:start + size]

    def record(self) -> dict[str, object]:
        """What the manifest records about this set.

        Examples:
            >>> ImageSet(np.zeros((2, 3, 8, 8), np.float32), np.zeros(2, int), ("a", "b"), "samples", "val").record()["images"]
            2
        """
        return {"source": self.source, "split": self.split, "images": len(self), "seed": self.seed,
                "sha256": self.sha256}


def _build(split: Split, indices: np.ndarray, targets: np.ndarray, metadata: ModelMetadata, data_cropped: bool,
           source: str, seed: int | None) -> ImageSet:
    spec = metadata.preprocessing.without_crop() if data_cropped else metadata.preprocessing
    ids = tuple(split.describe(int(i)) for i in indices)
    arrays = np.stack([preprocess(split.load(int(i)), spec, name=ids[n]) for n, i in enumerate(indices)])
    return ImageSet(arrays, targets[indices], ids, source, split.name, seed)


def calibration_set(data: str | os.PathLike, metadata: ModelMetadata, *, samples: int = 256, seed: int = 0,
                    split: str = "train", data_cropped: bool = False, labels: str | None = None,
                    exclude: Sequence[str] = (), force: bool = False) -> ImageSet:
    """A seeded, class-stratified sample of real images for int8 calibration.

    Args:
        data: a dataset (``.npz`` or image folder).
        metadata: the model's metadata (labels and preprocessing).
        samples: images to draw (spread over classes in proportion, at least one each).
        seed: the sampling seed.
        split: the split to draw from (the train split by default).
        data_cropped: the images already have the model's crop.
        labels: the dataset's class names, if its folders do not give them.
        exclude: image identities that must not be used (the evaluation images).
        force: accept too few images or images also used for evaluation.

    Raises:
        ConfigError: too few images, or an overlap with ``exclude``, unless forced.

    Examples:
        >>> images = calibration_set("samples/bloodmnist_128", metadata, samples=64, data_cropped=True)  # doctest: +SKIP
        >>> len(images)  # doctest: +SKIP
        64
    """
    dataset = load_dataset(data, labels=labels, seed=seed, **validation_carve(metadata))
    chosen = dataset.split(split)
    targets = dataset.targets_for(chosen, metadata.labels)
    if split in ("val", "test") and not force:
        raise ConfigError(f"calibrating on the {split} split would reuse evaluation images: use the train split "
                          "(or force it with --force-calib)")
    available = len(chosen)
    if available < min(samples, MIN_CALIBRATION_IMAGES) and not force:
        raise ConfigError(f"{data}: only {available} calibration images in '{split}', fewer than "
                          f"{min(samples, MIN_CALIBRATION_IMAGES)}; add images or pass --force-calib")
    if samples > available and not force:
        raise ConfigError(f"{data}: {samples} calibration images asked for, '{split}' has {available}; "
                          "lower --calib-samples or pass --force-calib")
    indices = _stratified(chosen.targets, min(samples, available), seed)
    if exclude:
        overlap = set(exclude) & {chosen.describe(int(i)) for i in indices}
        if overlap and not force:
            raise ConfigError(f"{len(overlap)} calibration images are also evaluation images "
                              f"(e.g. {sorted(overlap)[0]}); calibrate on other data or pass --force-calib")
    return _build(chosen, indices, targets, metadata, data_cropped, str(data), seed)


def evaluation_set(data: str | os.PathLike, metadata: ModelMetadata, *, split: str = "val",
                   data_cropped: bool = False, labels: str | None = None, limit: int | None = None,
                   seed: int = 0) -> ImageSet:
    """Held-out images for the verification gate: the whole split, or a stratified ``limit`` of it.

    Examples:
        >>> images = evaluation_set("samples/bloodmnist_128", metadata, split="test", data_cropped=True)  # doctest: +SKIP
        >>> images.arrays.shape  # doctest: +SKIP
        (32, 3, 128, 128)
    """
    dataset = load_dataset(data, labels=labels, seed=seed, **validation_carve(metadata))
    if split not in dataset.split_names and split != "all":
        raise DatasetError(
            f"{data}: has no '{split}' split to verify on (it has {', '.join(dataset.split_names)}): pass held-out "
            f"data with --eval DATA and choose its split with --eval-split (e.g. --eval-split "
            f"{'test' if 'test' in dataset.split_names else 'val'}), or train with --val-fraction so the checkpoint "
            "sets a val split aside"
        )
    chosen = dataset.split(split)
    targets = dataset.targets_for(chosen, metadata.labels)
    if limit is not None and limit < len(chosen):
        indices, used_seed = _stratified(chosen.targets, limit, seed), seed
    else:
        indices, used_seed = np.arange(len(chosen)), None
    return _build(chosen, indices, targets, metadata, data_cropped, str(data), used_seed)


def _stratified(targets: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices spread over classes in proportion (at least one per class), seeded, sorted."""
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(targets, return_counts=True)
    quota = np.maximum(1, np.floor(sizes / sizes.sum() * count)).astype(int)
    quota = np.minimum(quota, sizes)
    order = np.argsort(-(sizes / sizes.sum() * count - quota))  # hand out the remainder by largest fraction
    i = 0
    while quota.sum() < count and i < 10 * len(classes):
        c = order[i % len(classes)]
        if quota[c] < sizes[c]:
            quota[c] += 1
        i += 1
    chosen = [rng.choice(np.flatnonzero(targets == c), size=q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen))  # may exceed count by the one-per-class minimum

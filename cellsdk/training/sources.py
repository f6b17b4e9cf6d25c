"""Training data from several sources (labs): each with its own crop state, labels and split, sampled in balance.

A :class:`Source` is one dataset folder (or ``.npz``) with how its images relate to the model's preprocessing
(``cropped``: already cut by the model's crop, like ``bloodmnist_128``). :class:`SourceSet` loads them, maps each
source's classes onto the model's labels (a source may hold only some of them), and gives per-source splits,
records (name, image count, content hash, preprocessing) and a class-and-source balanced sampler.

Examples:
    >>> Source.parse("../shared/data/bloodmnist_128", cropped=True).name
    'bloodmnist_128'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.datasets import ImageDataset, Split, carve_validation, load_dataset
from cellsdk.errors import ConfigError, DatasetError
from cellsdk.metadata import Preprocessing

__all__ = ["Source", "SourceSet", "balanced_draw", "content_hash"]

_GENERIC = {"adapt", "train", "val", "test", "data", "images", "cells", "collected", "review"}


@dataclass(frozen=True)
class Source:
    """One dataset and how to read it.

    Attributes:
        path: a dataset folder or ``.npz``.
        cropped: its images already have the model's crop (skip the crop and the scale step).
        labels: class names, if its folders do not give them.
        name: what reports call it (default: the folder name).
    """

    path: str
    cropped: bool = False
    labels: str | None = None
    name: str = ""

    @classmethod
    def parse(cls, path: str | os.PathLike, *, cropped: bool = False, labels: str | None = None) -> Source:
        """A source named after its folder.

        Examples:
            >>> Source.parse("data/labA/", cropped=False).name, Source.parse("labB/adapt").name
            ('labA', 'labB/adapt')
        """
        text = str(path)
        folder = Path(text.rstrip("/") or text)
        name = folder.stem or text
        if name.lower() in _GENERIC and folder.parent.name:  # labA/adapt -> labA/adapt, not "adapt"
            name = f"{folder.parent.name}/{name}"
        return cls(text, cropped, labels, name)

    def spec(self, preprocessing: Preprocessing) -> Preprocessing:
        """The preprocessing its images get.

        Examples:
            >>> Source("d", cropped=True).spec(Preprocessing(64, "pixels", 200)).crop_mode
            'none'
        """
        return preprocessing.without_crop() if self.cropped else preprocessing


def content_hash(split_list: Sequence[Split], *, limit_bytes: int | None = None) -> str:
    """sha256 over every image of the splits (path-independent: the sorted hashes of the files' bytes).

    Examples:
        >>> split = Split("train", np.array([0]), images=np.zeros((1, 2, 2), np.uint8))
        >>> len(content_hash([split]))
        64
    """
    digests = []
    for split in split_list:
        if split.paths is not None:
            for path in split.paths:
                digests.append(hashlib.sha256(Path(path).read_bytes()[:limit_bytes]).hexdigest())
        else:
            digests.extend(hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
                           for image in split.images)  # type: ignore[union-attr]
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


@dataclass
class _Loaded:
    source: Source
    dataset: ImageDataset
    train: Split
    val: Split
    train_targets: np.ndarray
    val_targets: np.ndarray
    carved: str | None = None
    notes: list[str] = field(default_factory=list)


class SourceSet:
    """Several sources, their classes mapped onto one label list.

    Args:
        sources: the datasets.
        labels: the model's labels; a source class not among them is an error unless ``grow`` is set,
            in which case it is appended.
        val_fraction: for a source without a val split, the share of each class set aside (at least one image
            where a class has two or more; a class with one image stays in train, with a note).
        seed: the carve's seed.

    Raises:
        DatasetError, ConfigError: a source is missing, empty, or has classes the model does not know.
    """

    def __init__(self, sources: Sequence[Source], labels: Sequence[str], *, grow: bool = False,
                 val_fraction: float = 0.3, seed: int = 0):
        self.labels: list[str] = list(labels)
        self.added: list[str] = []
        self.loaded: list[_Loaded] = []
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"two sources share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}: "
                              "rename a folder")
        for source in sources:
            dataset = load_dataset(source.path, labels=source.labels, seed=seed, val_fraction=0.0,
                                   test_fraction=0.0)
            unknown = [c for c in dataset.labels if c not in self.labels]
            if unknown and not grow:
                raise ConfigError(f"{source.path}: classes {', '.join(unknown)} are not among the model's labels "
                                  f"({', '.join(self.labels)}): rename the folders, or pass --add-labels to grow the "
                                  "model's head")
            for name in unknown:
                self.labels.append(name)
                self.added.append(name)
            self.loaded.append(self._splits(source, dataset, val_fraction, seed))

    def _splits(self, source: Source, dataset: ImageDataset, val_fraction: float, seed: int) -> _Loaded:
        notes: list[str] = []
        carved = None
        if "val" not in dataset.splits:
            if "train" not in dataset.splits:
                raise DatasetError(f"{source.path}: no train split")
            train = dataset.split("train")
            counts = np.bincount(train.targets, minlength=dataset.num_classes)
            lonely = [dataset.labels[i] for i, n in enumerate(counts) if n == 1]
            if lonely:
                notes.append(f"{source.name}: {', '.join(lonely)} {'has' if len(lonely) == 1 else 'have'} a single "
                             "image, too few to hold one out: used for training only, not validated")
            dataset = carve_validation(dataset, val_fraction, seed)
            carved = f"{val_fraction:g} of each class (seed {seed})"
        train, val = dataset.split("train"), dataset.split("val")
        if not len(train):
            raise DatasetError(f"{source.path}: no training images")
        return _Loaded(source, dataset, train, val, dataset.targets_for(train, self.labels),
                       dataset.targets_for(val, self.labels), carved, notes)

    @property
    def notes(self) -> list[str]:
        """What the loading had to decide (carved validation splits, classes too small to hold out)."""
        out = []
        for item in self.loaded:
            if item.carved:
                out.append(f"{item.source.name}: no val split; {len(item.val)} images held out for validation "
                           f"({item.carved})")
            out.extend(item.notes)
        return out

    def classes_of(self, index: int) -> list[int]:
        """The model-label indices source ``index`` can label (the loss counts only these).

        Examples:
            >>> sources.classes_of(0)  # doctest: +SKIP
            [0, 1, 2, 3, 4, 5, 6, 7]
        """
        item = self.loaded[index]
        return sorted({self.labels.index(c) for c in item.dataset.labels})

    def record(self, index: int, preprocessing: Preprocessing) -> dict[str, Any]:
        """What a checkpoint records about source ``index``: name, images, content hash, preprocessing.

        Examples:
            >>> sources.record(0, metadata.preprocessing)["images"]  # doctest: +SKIP
            {'train': 40, 'val': 12}
        """
        item = self.loaded[index]
        per_class = {self.labels[c]: int(np.count_nonzero(item.train_targets == c)) for c in self.classes_of(index)}
        return {"name": item.source.name, "path": item.source.path, "cropped": item.source.cropped,
                "classes": [self.labels[c] for c in self.classes_of(index)],
                "images": {"train": len(item.train), "val": len(item.val)}, "train_per_class": per_class,
                "validation": item.carved or "the source's own val split",
                "sha256": content_hash([item.train, item.val]),
                "preprocessing": item.source.spec(preprocessing).describe()}


def balanced_draw(targets: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn with classes in equal shares (uniform class, then uniform image; with replacement).

    Examples:
        >>> rows = balanced_draw(np.array([0] * 98 + [1, 1]), 1000, np.random.default_rng(0))
        >>> 0.4 < float(np.mean(np.array([0] * 98 + [1, 1])[rows])) < 0.6
        True
    """
    classes = np.unique(targets)
    members = [np.flatnonzero(targets == c) for c in classes]
    picks = rng.integers(0, len(classes), size=count)
    return np.array([members[p][rng.integers(0, len(members[p]))] for p in picks], dtype=np.int64)


def iterate_items(split: Split, rows: np.ndarray) -> Iterator[Any]:
    """The images of ``rows`` of a split, loaded.

    Examples:
        >>> list(iterate_items(Split("t", np.array([0]), images=np.zeros((1, 2, 2), np.uint8)), np.array([0])))[0].size
        (2, 2)
    """
    for row in rows:
        yield split.load(int(row))

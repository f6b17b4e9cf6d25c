"""Dataset loaders for MedMNIST-style ``.npz`` files and image folders (torch-free).

Three layouts are recognised by :func:`load_dataset`:

* a MedMNIST-style ``.npz`` with ``{train,val,test}_{images,labels}`` at any
  resolution (images ``N x H x W`` or ``N x H x W x C``, labels ``N`` or ``N x 1``);
* an image folder with split subfolders, ``split/class/*.jpg``;
* an image folder without splits, ``class/*.jpg``, split deterministically and
  stratified by class with a seed.

Class names come from the folders, from a known label map (``"bloodmnist"``)
or from the caller. Problems are found when the dataset is opened, not hours
into training: missing keys, empty classes, unreadable files and labels out
of range raise :class:`~cellsdk.errors.DatasetError` naming what to fix.

Examples:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> arrays = {f"{s}_{k}": np.zeros((4, 8, 8, 3), np.uint8) if k == "images"
    ...           else np.array([0, 1, 0, 1]) for s in ("train", "val", "test") for k in ("images", "labels")}
    >>> np.savez(path, **arrays)
    >>> ds = load_dataset(path)
    >>> ds.labels, len(ds.split("train"))
    (('class_0', 'class_1'), 4)
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._table import text_table
from cellsdk.errors import DatasetError
from cellsdk.image_folders import UNLABELLED, check_header, class_folders, class_index, flatten, is_image, scan_classes
from cellsdk.labelmaps import KNOWN_LABEL_MAPS, resolve_label_map
from cellsdk.preprocessing import IMAGE_EXTENSIONS, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "UNLABELLED",
    "ImageDataset",
    "Split",
    "carve_validation",
    "is_image",
    "load_dataset",
    "validation_carve",
]

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Split:
    """One split of a dataset: images (paths or an array) and integer labels.

    Examples:
        >>> s = Split("val", np.array([1, 0]), images=np.zeros((2, 4, 4), np.uint8))
        >>> s.load(0).size, s.class_counts(2).tolist()
        ((4, 4), [1, 1])
    """

    name: str
    targets: np.ndarray
    paths: tuple[Path, ...] | None = None
    images: np.ndarray | None = field(default=None, repr=False)
    origin: str = ""

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def describe(self, index: int) -> str:
        """The name of item ``index`` for messages: its path, or ``file[split][i]``.

        Examples:
            >>> load_dataset("samples/bloodmnist_128").split("test").describe(0).endswith(".jpg")
            True
        """
        if self.paths is not None:
            return str(self.paths[index])
        return f"{self.origin}[{self.name}][{index}]"

    def load(self, index: int):  # -> PIL.Image.Image
        """Decode item ``index`` into an RGB PIL image (InvalidImageError names it).

        Examples:
            >>> load_dataset("samples/bloodmnist_128").split("test").load(0).size
            (128, 128)
        """
        source = self.paths[index] if self.paths is not None else self.images[index]  # type: ignore[index]
        return load_image(source, name=self.describe(index))

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Images per class, as an array of length ``num_classes``.

        Examples:
            >>> load_dataset("samples/bloodmnist_128").split("test").class_counts(8).tolist()
            [4, 4, 4, 4, 4, 4, 4, 4]
        """
        return np.bincount(self.targets, minlength=num_classes)


@dataclass(frozen=True)
class ImageDataset:
    """A dataset: ordered class names and its splits.

    Examples:
        >>> ds = ImageDataset("demo", ("a", "b"), {"train": Split("train", np.array([0, 1]),
        ...     images=np.zeros((2, 4, 4), np.uint8))})
        >>> ds.num_classes, ds.split_names
        (2, ('train',))
    """

    source: str
    labels: tuple[str, ...]
    splits: Mapping[str, Split]
    layout: str = ""

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.labels)

    @property
    def split_names(self) -> tuple[str, ...]:
        """The splits present, in train/val/test order."""
        return tuple(name for name in SPLITS if name in self.splits)

    def split(self, name: str) -> Split:
        """Return split ``name`` (``all`` joins every split); raise DatasetError listing the available ones.

        Examples:
            >>> data = load_dataset("samples/bloodmnist_128")
            >>> len(data.split("all")) > len(data.split("test"))
            True
        """
        key = _SPLIT_ALIASES.get(name.lower(), name)
        if key == "all":
            return self._all()
        if key not in self.splits:
            raise DatasetError(
                f"{self.source}: has no '{name}' split (available: {', '.join(self.split_names)}, all)"
            )
        return self.splits[key]

    def _all(self) -> Split:
        parts = [self.splits[name] for name in self.split_names]
        targets = np.concatenate([p.targets for p in parts])
        if all(p.paths is not None for p in parts):
            paths = tuple(path for p in parts for path in p.paths)  # type: ignore[union-attr]
            return Split("all", targets, paths=paths, origin=self.source)
        images = np.concatenate([p.images for p in parts])
        return Split("all", targets, images=images, origin=self.source)

    def targets_for(self, split: Split, model_labels: Sequence[str]) -> np.ndarray:
        """The split's targets as indices into ``model_labels``, matched by class name.

        Raises:
            DatasetError: the dataset has classes the model does not know.

        Examples:
            >>> ds = ImageDataset("d", ("b", "a"), {"val": Split("val", np.array([0, 1]),
            ...     images=np.zeros((2, 4, 4), np.uint8))})
            >>> ds.targets_for(ds.split("val"), ("a", "b", "c")).tolist()
            [1, 0]
        """
        unknown = [name for name in self.labels if name not in model_labels]
        if unknown:
            raise DatasetError(
                f"{self.source}: classes {', '.join(unknown)} are not among the model's "
                f"({', '.join(model_labels)}); use data with the model's classes"
            )
        lookup = np.asarray([list(model_labels).index(name) for name in self.labels], dtype=np.int64)
        return lookup[split.targets]

    def summary(self) -> str:
        """A small text table of images per class and split.

        Examples:
            >>> print(load_dataset("samples/bloodmnist_128").summary().splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
            class train val test
        """
        counts = {s: self.splits[s].class_counts(self.num_classes) for s in self.split_names}
        rows = [[label, *(counts[s][index] for s in self.split_names)] for index, label in enumerate(self.labels)]
        rows.append(["total", *(len(self.splits[s]) for s in self.split_names)])
        return text_table(["class", *self.split_names], rows, align="l" + "r" * len(self.split_names))


def load_dataset(
    path: str | os.PathLike,
    *,
    labels: str | Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    check_files: bool = True,
    carve_val: float | None = None,
    carve_seed: int = 0,
) -> ImageDataset:
    """Open a dataset in any supported layout and check it.

    Args:
        path: a ``.npz`` file or an image folder.
        labels: class names: a known map (``"bloodmnist"``), comma-separated
            names, or a sequence; default from the folders, or a known map
            named in the file name, or ``class_0 ...``.
        seed: seed of the stratified split of a folder without split folders.
        val_fraction: share of each class put in ``val`` by that split.
        test_fraction: share of each class put in ``test`` by that split.
        check_files: open every image file's header now so an unreadable
            file fails before training starts.
        carve_val: for data with a train split but no val split, the share of
            each class of train set aside as ``val`` (seeded by ``carve_seed``);
            ``cellsdk-train --val-fraction`` records it in the checkpoint so every
            later step carves the same images (see :func:`validation_carve`).
        carve_seed: the seed of that carve.

    Raises:
        DatasetError: the dataset is missing, malformed or inconsistent.

    Examples:
        >>> load_dataset("/no/such/data")
        Traceback (most recent call last):
        ...
        cellsdk.errors.DatasetError: /no/such/data: no such file or folder
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError(
            f"split fractions val={val_fraction}, test={test_fraction} leave no training data: "
            "use fractions in [0, 1) that sum to less than 1"
        )
    names = resolve_label_map(labels) if labels is not None else None
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise DatasetError(f"{root}: unsupported dataset file; use a MedMNIST-style .npz or an image folder")
        dataset = _load_npz(root, names)
    else:
        dataset = _load_folder(root, names, seed, val_fraction, test_fraction, check_files)
    if carve_val and "val" not in dataset.splits and "train" in dataset.splits:
        dataset = carve_validation(dataset, carve_val, carve_seed)
    return dataset


def carve_validation(dataset: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """``dataset`` with ``fraction`` of each class of its train split moved to a new ``val`` split (seeded).

    Raises:
        DatasetError: the dataset already has a val split, has no train split, or the fraction is out of range.

    Examples:
        >>> ds = ImageDataset("d", ("a", "b"), {"train": Split("train", np.array([0] * 10 + [1] * 10),
        ...     images=np.zeros((20, 4, 4), np.uint8))})
        >>> carved = carve_validation(ds, 0.2)
        >>> len(carved.split("train")), len(carved.split("val"))
        (16, 4)
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"validation fraction {fraction} must lie strictly between 0 and 1, e.g. 0.1")
    if "val" in dataset.splits:
        raise DatasetError(f"{dataset.source}: already has a val split; leave out --val-fraction")
    train = dataset.split("train")
    rng = np.random.default_rng(seed)
    val_rows: list[int] = []
    for label in np.unique(train.targets):
        members = np.flatnonzero(train.targets == label)
        members = members[rng.permutation(len(members))]
        take = min(max(round(len(members) * fraction), 1), len(members) - 1)  # keep >= 1 training image
        val_rows.extend(members[:take].tolist())
    val_index = np.asarray(sorted(val_rows), dtype=np.int64)
    train_index = np.setdiff1d(np.arange(len(train)), val_index)

    def part(name: str, rows: np.ndarray) -> Split:
        if train.paths is not None:
            return Split(name, train.targets[rows], paths=tuple(train.paths[i] for i in rows), origin=train.origin)
        return Split(name, train.targets[rows], images=train.images[rows], origin=train.origin)  # type: ignore[index]

    splits = {**dataset.splits, "train": part("train", train_index), "val": part("val", val_index)}
    return dataclasses.replace(dataset, splits={s: splits[s] for s in SPLITS if s in splits},
                               layout=f"{dataset.layout}, val carved from train ({fraction:g}, seed {seed})")


def validation_carve(metadata: Any) -> dict[str, Any]:
    """``load_dataset`` keywords that carve the same val split the model was trained with (empty if none).

    Examples:
        >>> from types import SimpleNamespace
        >>> validation_carve(SimpleNamespace(training={"config": {"val_fraction": 0.1, "seed": 3}}))
        {'carve_val': 0.1, 'carve_seed': 3}
    """
    config = (getattr(metadata, "training", None) or {}).get("config") or {}
    fraction = config.get("val_fraction") if isinstance(config, dict) else None
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        return {}
    seed = config.get("seed", 0)
    return {"carve_val": float(fraction), "carve_seed": int(seed) if isinstance(seed, int) else 0}


# --------------------------------------------------------------------------- npz


def _load_npz(path: Path, names: tuple[str, ...] | None) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DatasetError(f"{path}: not a readable .npz file ({err})") from None
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise DatasetError(
            f"{path}: missing keys {', '.join(missing)}; a MedMNIST-style .npz holds "
            "{train,val,test}_{images,labels}"
        )
    splits: dict[str, Split] = {}
    for split in SPLITS:
        images, targets = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = f"{path}: {split}"
        if images.ndim == 4 and images.shape[-1] not in (1, 3):
            raise DatasetError(f"{where}_images has {images.shape[-1]} channels; expected 1 or 3 (N x H x W x C)")
        if images.ndim not in (3, 4):
            raise DatasetError(f"{where}_images has shape {images.shape}; expected N x H x W or N x H x W x C")
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.ndim != 1:
            raise DatasetError(f"{where}_labels has shape {targets.shape}; expected N or N x 1 (single-label)")
        if not np.issubdtype(targets.dtype, np.integer):
            raise DatasetError(f"{where}_labels has dtype {targets.dtype}; expected integers")
        if len(images) != len(targets):
            raise DatasetError(f"{where}: {len(images)} images but {len(targets)} labels")
        if len(images) == 0:
            raise DatasetError(f"{where} split is empty")
        splits[split] = Split(split, targets.astype(np.int64), images=images, origin=str(path))
    if names is None:
        names = _npz_default_names(path, splits)
    _check_targets(str(path), names, splits)
    return ImageDataset(str(path), names, splits, layout="npz")


def _npz_default_names(path: Path, splits: Mapping[str, Split]) -> tuple[str, ...]:
    highest = max(int(s.targets.max()) for s in splits.values())
    stem = path.stem.lower()
    for key, known in KNOWN_LABEL_MAPS.items():
        if key in stem:
            return known
    return tuple(f"class_{i}" for i in range(max(highest + 1, 2)))


def _check_targets(source: str, names: tuple[str, ...], splits: Mapping[str, Split]) -> None:
    for split in splits.values():
        bad = (split.targets < 0) | (split.targets >= len(names))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                f"{source}: {int(bad.sum())} {split.name} labels out of range 0..{len(names) - 1} "
                f"(first: {split.describe(first)} has label {int(split.targets[first])}); "
                "check the label map (--labels)"
            )
    train = splits.get("train")
    if train is not None:
        empty = [names[i] for i, n in enumerate(train.class_counts(len(names))) if n == 0]
        if empty:
            raise DatasetError(f"{source}: class {', '.join(empty)} has no training images")


# ------------------------------------------------------------------------ folders


def _load_folder(
    root: Path,
    names: tuple[str, ...] | None,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    check_files: bool,
) -> ImageDataset:
    split_dirs = {_SPLIT_ALIASES[p.name.lower()]: p for p in class_folders(root) if p.name.lower() in _SPLIT_ALIASES}
    if split_dirs:  # a folder with only val/ or test/ is fine for evaluation; training asks for train
        by_split = {split: scan_classes(folder) for split, folder in split_dirs.items()}
        layout = "split-folders"
    else:
        by_split = {"all": scan_classes(root)}
        layout = "class-folders"
    folder_classes = sorted({c for classes in by_split.values() for c in classes})
    if not folder_classes:
        raise DatasetError(
            f"{root}: no class folders with images found; expected split/class/*.jpg or class/*.jpg"
        )
    names, folder_to_index = class_index(root, folder_classes, names)
    if check_files:
        for files in (f for classes in by_split.values() for f in classes.values()):
            for file in files:
                check_header(file)
    splits: dict[str, Split] = {}
    if layout == "split-folders":
        for split, classes in by_split.items():
            paths, targets = flatten(classes, folder_to_index)
            if not paths:
                raise DatasetError(f"{split_dirs[split]}: split folder holds no images")
            splits[split] = Split(split, targets, paths=tuple(paths), origin=str(root))
    else:
        paths, targets = flatten(by_split["all"], folder_to_index)
        splits = _stratified_split(paths, targets, seed, val_fraction, test_fraction, str(root))
    _check_targets(str(root), names, splits)
    return ImageDataset(str(root), names, {s: splits[s] for s in SPLITS if s in splits}, layout=layout)


def _stratified_split(
    paths: list[Path], targets: np.ndarray, seed: int, val_fraction: float, test_fraction: float, origin: str
) -> dict[str, Split]:
    """Split per class with a seeded permutation: the same seed gives the same split."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        members = members[rng.permutation(len(members))]
        # round per class, but always keep at least one training image of each class
        n_test = min(round(len(members) * test_fraction), len(members) - 1)
        n_val = min(round(len(members) * val_fraction), len(members) - 1 - n_test)
        chosen["test"].extend(members[:n_test].tolist())
        chosen["val"].extend(members[n_test:n_test + n_val].tolist())
        chosen["train"].extend(members[n_test + n_val:].tolist())
    out: dict[str, Split] = {}
    for split, indices in chosen.items():
        if indices:
            indices = sorted(indices)
            out[split] = Split(split, targets[indices], paths=tuple(paths[i] for i in indices), origin=origin)
    return out

"""Image-folder datasets: which files are images, which folders are classes, and how folders map to labels.

The reading side of :func:`cellsdk.datasets.load_dataset` for ``class/*.jpg`` and ``split/class/*.jpg`` trees.

Examples:
    >>> is_image(Path("samples/SOURCE.md"))
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from cellsdk.errors import DatasetError
from cellsdk.labelmaps import KNOWN_LABEL_MAPS
from cellsdk.preprocessing import IMAGE_EXTENSIONS

__all__ = ["UNLABELLED", "check_header", "class_folders", "class_index", "flatten", "is_image", "scan_classes"]

#: a collect folder's unlabelled pool (:mod:`cellsdk.pool`): never a class or a split of a dataset folder
UNLABELLED = "unlabelled"


def is_image(path: Path) -> bool:
    """Whether ``path`` is an image file cellsdk reads: an existing, visible file with an image suffix (any case).

    Examples:
        >>> is_image(Path("samples/pbc_raw/ig/MMY_163947.jpg")), is_image(Path("samples/SOURCE.md"))
        (True, False)
    """
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def class_folders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder`` that can be classes (a collect folder's ``unlabelled/`` pool never is).

    Examples:
        >>> [p.name for p in class_folders(Path("samples/pbc_raw"))][:2]
        ['basophil', 'eosinophil']
    """
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != UNLABELLED)


def scan_classes(folder: Path) -> dict[str, list[Path]]:
    """``{class folder name: its image files}`` of a class-folder tree.

    Raises:
        DatasetError: a class folder without images.

    Examples:
        >>> len(scan_classes(Path("samples/pbc_raw"))["ig"]) > 0
        True
    """
    classes: dict[str, list[Path]] = {}
    for class_dir in class_folders(folder):
        files = sorted(p for p in class_dir.iterdir() if is_image(p))
        if not files:
            raise DatasetError(
                f"{class_dir}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        classes[class_dir.name] = files
    return classes


def class_index(
    root: Path, folder_classes: list[str], names: tuple[str, ...] | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Map folder names to label indices, using a label map where one fits.

    Raises:
        DatasetError: numbered folders without names, a single class, or folders outside the label map.

    Examples:
        >>> class_index(Path("d"), ["cat", "dog"], None)
        (('cat', 'dog'), {'cat': 0, 'dog': 1})
    """
    numeric = all(name.isdigit() for name in folder_classes)
    if names is None:
        if numeric:
            raise DatasetError(
                f"{root}: class folders are numbers ({', '.join(folder_classes[:4])} ...); "
                "name the classes with --labels (e.g. bloodmnist or a,b,c)"
            )
        for known in KNOWN_LABEL_MAPS.values():
            if set(folder_classes) == set(known):
                names = known
                break
        else:
            names = tuple(folder_classes)
        if len(names) < 2:
            raise DatasetError(f"{root}: only one class folder ({folder_classes[0]}); a classifier needs two or more")
    if numeric:
        mapping = {name: int(name) for name in folder_classes}
    else:
        unknown = [name for name in folder_classes if name not in names]
        if unknown:
            raise DatasetError(
                f"{root}: class folders {', '.join(unknown)} are not in the label map ({', '.join(names)})"
            )
        mapping = {name: names.index(name) for name in folder_classes}
    return names, mapping


def check_header(path: Path) -> None:
    """Refuse an image file that does not open or has no pixels (its header only: cheap).

    Raises:
        DatasetError: naming the file and the fix.

    Examples:
        >>> check_header(Path("samples/pbc_raw/ig/MMY_163947.jpg"))
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise DatasetError(f"{path}: unreadable image file ({type(err).__name__}: {err}); fix or remove it") from None
    if width <= 0 or height <= 0:
        raise DatasetError(f"{path}: image has no pixels; fix or remove it")


def flatten(classes: Mapping[str, list[Path]], mapping: Mapping[str, int]) -> tuple[list[Path], np.ndarray]:
    """Paths and label indices of every class, in label order.

    Examples:
        >>> flatten({"b": [Path("b1")], "a": [Path("a1")]}, {"a": 0, "b": 1})
        ([PosixPath('a1'), PosixPath('b1')], array([0, 1]))
    """
    paths: list[Path] = []
    targets: list[int] = []
    for name in sorted(classes, key=lambda n: mapping[n]):
        paths.extend(classes[name])
        targets.extend([mapping[name]] * len(classes[name]))
    return paths, np.asarray(targets, dtype=np.int64)

"""Known label maps: class names in the output order of published datasets.

Examples:
    >>> resolve_label_map("bloodmnist")[3]
    'ig'
"""

from __future__ import annotations

from collections.abc import Sequence

from cellsdk.errors import DatasetError

__all__ = ["BLOODMNIST", "KNOWN_LABEL_MAPS", "resolve_label_map"]

#: BloodMNIST / PBC classes in MedMNIST order (``ig`` = immature granulocytes).
BLOODMNIST: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

KNOWN_LABEL_MAPS: dict[str, tuple[str, ...]] = {"bloodmnist": BLOODMNIST}


def resolve_label_map(labels: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a known map's name, or a comma-separated / listed set of names, into a tuple.

    Raises:
        DatasetError: an unknown map name, or fewer than two or repeated names.

    Examples:
        >>> resolve_label_map("a,b,c")
        ('a', 'b', 'c')
    """
    if isinstance(labels, str):
        key = labels.strip().lower()
        if key in KNOWN_LABEL_MAPS:
            return KNOWN_LABEL_MAPS[key]
        names = tuple(part.strip() for part in labels.split(",") if part.strip())
        if len(names) < 2:
            known = ", ".join(sorted(KNOWN_LABEL_MAPS))
            raise DatasetError(
                f"unknown label map {labels!r}: use a known one ({known}) or comma-separated class names"
            )
    else:
        names = tuple(str(name) for name in labels)
    if len(names) < 2:
        raise DatasetError(f"a label map needs at least two class names, got {list(names)}")
    if len(set(names)) != len(names):
        raise DatasetError(f"label map has repeated class names: {list(names)}")
    return names

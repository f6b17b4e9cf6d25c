"""Exact and near-duplicate images across dataset splits, found by perceptual hashing.

A validation or test image that is a copy of a training image, or an augmented copy of one (flipped,
rotated, re-encoded, re-coloured), makes validation accuracy a measure of memory rather than of
generalisation. ``cellsdk-train`` runs this check before training and warns; it is also one call here.

Each image is reduced to a 256-bit difference hash (the signs of horizontal brightness gradients on a
16 x 17 grayscale thumbnail). Distinct cells of BloodMNIST-128 lie 50 to 90 bits apart (1st percentile of
the nearest training image: 62 bits); copies lie within a few bits. Held-out images are also hashed in their
8 flips / right-angle rotations, so a rotated copy is found too. Distances are computed as one matrix
product of +-1 bit vectors (BLAS), so 5,000 held-out images x 8 orientations against 12,000 training
images take seconds.

Examples:
    >>> import numpy as np
    >>> from cellsdk.datasets import ImageDataset, Split
    >>> rng = np.random.default_rng(0)
    >>> train = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    >>> val = np.stack([np.rot90(train[2]), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)])
    >>> ds = ImageDataset("toy", ("a", "b"), {"train": Split("train", np.array([0, 1] * 3), images=train),
    ...                                       "val": Split("val", np.array([0, 1]), images=val)})
    >>> report = find_cross_split_duplicates(ds)
    >>> [(p.split, p.index, p.other_split, p.other_index, p.transform) for p in report.pairs]
    [('val', 0, 'train', 2, 'rot270')]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["HASH_BITS", "NEAR_DUPLICATE_BITS", "DuplicatePair", "DuplicateReport", "find_cross_split_duplicates",
           "image_hashes"]

_SIDE = 16
HASH_BITS = _SIDE * _SIDE
#: at most this many differing bits (of 256) makes two images near duplicates
NEAR_DUPLICATE_BITS = 24
_TRANSFORMS: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("identity", lambda a: a), ("rot90", lambda a: np.rot90(a, 1)), ("rot180", lambda a: np.rot90(a, 2)),
    ("rot270", lambda a: np.rot90(a, 3)), ("flip", lambda a: a[:, ::-1]), ("flip+rot90", lambda a: np.rot90(a[:, ::-1], 1)),
    ("flip+rot180", lambda a: np.rot90(a[:, ::-1], 2)), ("flip+rot270", lambda a: np.rot90(a[:, ::-1], 3)),
)


@dataclass(frozen=True)
class DuplicatePair:
    """A held-out image (``split``, ``index``) that copies ``other_split``'s image ``other_index``.

    ``bits`` is how many of the 256 hash bits differ; ``transform`` is the flip / rotation that turns the
    held-out image into the other one (``identity`` for a plain copy).
    """

    split: str
    index: int
    name: str
    other_split: str
    other_index: int
    other_name: str
    bits: int
    transform: str

    @property
    def exact(self) -> bool:
        """Identical hashes: the same picture (possibly re-encoded, flipped or rotated)."""
        return self.bits == 0


@dataclass
class DuplicateReport:
    """Cross-split duplicates of a dataset, with how many images were hashed and how long it took."""

    pairs: list[DuplicatePair] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    threshold: int = NEAR_DUPLICATE_BITS

    def counts(self) -> dict[str, int]:
        """Held-out images with a copy, per ``split->other`` (e.g. ``{"val->train": 3}``).

        Examples:
            >>> DuplicateReport(pairs=[], images={"train": 4}, seconds=0.1).counts()
            {}
        """
        out: dict[str, int] = {}
        for pair in self.pairs:
            key = f"{pair.split}->{pair.other_split}"
            out[key] = out.get(key, 0) + 1
        return out

    def summary(self) -> str:
        """One line: what was found, with an example.

        Examples:
            >>> DuplicateReport(images={"train": 10, "val": 2}).summary()
            'no duplicates across splits (12 images hashed, 0.0 s)'
        """
        total = sum(self.images.values())
        if not self.pairs:
            return f"no duplicates across splits ({total} images hashed, {self.seconds:.1f} s)"
        first = self.pairs[0]
        counts = ", ".join(f"{n} {key.replace('->', ' images copy ')} images" for key, n in self.counts().items())
        exact = sum(p.exact for p in self.pairs)
        return (f"{len(self.pairs)} held-out images duplicate another split ({counts}; {exact} exact, "
                f"{len(self.pairs) - exact} near), e.g. {first.name} ~ {first.other_name} ({first.bits} of "
                f"{HASH_BITS} bits differ, {first.transform}): held-out accuracy on them measures memory; "
                "remove them from one split")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (every pair).

        Examples:
            >>> DuplicateReport(pairs=[], images={"train": 4}, seconds=0.1).to_dict()["pairs"]
            []
        """
        return {"images": self.images, "seconds": self.seconds, "threshold_bits": self.threshold,
                "hash_bits": HASH_BITS, "counts": self.counts(),
                "pairs": [pair.__dict__ for pair in self.pairs]}


def image_hashes(image: Image.Image | np.ndarray, *, orientations: bool = False) -> np.ndarray:
    """The 256-bit difference hash of an image as a bool array (``8 x 256`` with all ``orientations``).

    Examples:
        >>> image_hashes(np.zeros((20, 20), np.uint8)).shape, image_hashes(np.zeros((20, 20), np.uint8), orientations=True).shape
        ((256,), (8, 256))
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = np.asarray(image.convert("L").resize((_SIDE + 1, _SIDE + 1), Image.Resampling.BOX), dtype=np.int16)
    variants = _TRANSFORMS if orientations else _TRANSFORMS[:1]
    hashes = np.stack([(t[:_SIDE, 1:] > t[:_SIDE, :-1]).ravel() for t in (f(grey) for _, f in variants)])
    return hashes if orientations else hashes[0]


def find_cross_split_duplicates(dataset: Any, *, threshold: int = NEAR_DUPLICATE_BITS,
                                progress: Callable[[int], None] | None = None) -> DuplicateReport:
    """Held-out images (val, test) that copy a training image, and test images that copy a val image.

    Args:
        dataset: a :class:`cellsdk.datasets.ImageDataset`.
        threshold: the most differing bits (of 256) that still count as a copy.
        progress: called with the number of images hashed since the last call.

    Examples:
        >>> from cellsdk.datasets import load_dataset
        >>> find_cross_split_duplicates(load_dataset("samples/bloodmnist_128")).pairs
        []
    """
    started = time.perf_counter()
    splits = [name for name in ("train", "val", "test") if name in dataset.splits]
    hashes = {name: _hash_split(dataset.splits[name], orientations=name != "train", progress=progress)
              for name in splits}
    pairs: list[DuplicatePair] = []
    for query, reference in (("val", "train"), ("test", "train"), ("test", "val")):
        if query not in hashes or reference not in hashes:
            continue
        base = hashes[reference] if reference == "train" else hashes[reference][:, 0]
        pairs.extend(_match(dataset, query, hashes[query], reference, base, threshold))
    return DuplicateReport(pairs, {name: len(dataset.splits[name]) for name in splits},
                           time.perf_counter() - started, threshold)


def _hash_split(split: Any, *, orientations: bool, progress: Callable[[int], None] | None) -> np.ndarray:
    out = np.zeros((len(split), 8, HASH_BITS) if orientations else (len(split), HASH_BITS), dtype=bool)
    for i in range(len(split)):
        image = _thumbnail_source(split, i)
        if image is not None:
            out[i] = image_hashes(image, orientations=orientations)
        if progress is not None and (i + 1) % 256 == 0:
            progress(256)
    if progress is not None:
        progress(len(split) % 256)
    return out


def _thumbnail_source(split: Any, index: int) -> Image.Image | None:
    """The image, decoded at reduced size where the format allows (JPEG draft mode); None if unreadable."""
    if split.paths is None:
        return Image.fromarray(split.images[index])
    try:
        with Image.open(split.paths[index]) as image:
            image.draft("L", (4 * _SIDE, 4 * _SIDE))
            return image.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # training reports unreadable files itself


def _match(dataset: Any, query: str, query_hashes: np.ndarray, reference: str, reference_hashes: np.ndarray,
           threshold: int) -> list[DuplicatePair]:
    """Pairs within ``threshold`` bits: Hamming distance from one BLAS product of +-1 vectors."""
    if not len(query_hashes) or not len(reference_hashes):
        return []
    ref = reference_hashes.astype(np.float32) * 2 - 1  # N x 256
    found: list[DuplicatePair] = []
    chunk = 256
    for start in range(0, len(query_hashes), chunk):
        block = query_hashes[start:start + chunk].astype(np.float32) * 2 - 1  # n x 8 x 256
        n = len(block)
        agreement = block.reshape(n * 8, HASH_BITS) @ ref.T  # 256 - 2 * distance
        distance = ((HASH_BITS - agreement) / 2).reshape(n, 8, -1)
        best_transform = distance.min(axis=2).argmin(axis=1)
        best = distance[np.arange(n), best_transform]  # n x N
        nearest = best.argmin(axis=1)
        for row in np.flatnonzero(best[np.arange(n), nearest] <= threshold):
            index, other = start + int(row), int(nearest[row])
            found.append(DuplicatePair(
                query, index, dataset.splits[query].describe(index), reference, other,
                dataset.splits[reference].describe(other), round(float(best[row, other])),
                _TRANSFORMS[int(best_transform[row])][0]))
    return found

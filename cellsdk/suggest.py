"""Labels where they help most: which of a lab's unlabelled cells a technician should label first.

A lab adapting a model labels a few cells per class. Chosen at random, most of them are cells the model already
gets right and that look like each other; :func:`rank_for_labelling` picks cells that are *uncertain* (a small
margin between the two most likely classes) and *diverse* (far, in the model's feature space, from the cells
already picked), with every predicted class represented:

1. each predicted class gets an equal share of the ``n`` picks (a class with fewer cells gives its rest away);
2. within a class, the first pick is its most typical cell (nearest the class's mean feature), then greedily the
   cell with the largest ``distance to the nearest pick so far x (0.5 + uncertainty)`` — a k-centre cover
   weighted towards the cells the model hesitates on (as in core-set and BADGE-style active learning).

:func:`suggest_cells` runs a deployed model (any artefact ``Classifier.load`` reads, torch-free) over a folder of
cells and ranks them; ``cellsdk adapt --suggest N UNLABELLED`` and the review page's default order use it.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> features = np.concatenate([rng.normal(0, 1, (50, 8)), rng.normal(5, 1, (50, 8))])
    >>> probabilities = np.repeat([[0.9, 0.1], [0.2, 0.8]], 50, axis=0)
    >>> picks = rank_for_labelling(features, probabilities, 4)
    >>> sorted(int(probabilities[i].argmax()) for i in picks)  # both predicted classes represented
    [0, 0, 1, 1]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.datasets import is_image
from cellsdk.errors import CellSDKError, ConfigError

__all__ = ["Suggestion", "image_files", "rank_for_labelling", "suggest_cells", "uncertainty"]

#: feature dimensions kept for the distances (principal components of the pool's features)
_DIMS = 32


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """One minus the margin between the two most likely classes: 0 = sure, 1 = a tie.

    Examples:
        >>> uncertainty(np.array([[0.9, 0.1], [0.5, 0.5]])).round(2).tolist()
        [0.2, 1.0]
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    top = np.sort(probabilities, axis=1)
    return 1.0 - (top[:, -1] - top[:, -2])


def _embedding(features: np.ndarray) -> np.ndarray:
    """L2-normalised features on their leading principal directions (distances then cost little)."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] > _DIMS and len(x) > _DIMS:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:_DIMS].T
    return x


def _quotas(predicted: np.ndarray, n: int) -> dict[int, int]:
    """Equal shares of ``n`` per predicted class; what a small class cannot use goes to the others."""
    sizes = {int(c): int(np.count_nonzero(predicted == c)) for c in np.unique(predicted)}
    quotas = dict.fromkeys(sizes, 0)
    left = min(n, len(predicted))
    while left > 0:
        open_classes = sorted((c for c in sizes if quotas[c] < sizes[c]), key=lambda c: (quotas[c], -sizes[c]))
        if not open_classes:
            break
        quotas[open_classes[0]] += 1
        left -= 1
    return quotas


def rank_for_labelling(features: np.ndarray, probabilities: np.ndarray, n: int, *,
                       eligible: np.ndarray | None = None) -> list[int]:
    """The ``n`` cells (row indices) whose labels would help most, in the order to label them.

    Args:
        features: one pooled feature vector per cell (the model's ``features`` output).
        probabilities: the model's class probabilities per cell.
        n: how many to pick (all eligible cells when there are fewer).
        eligible: a boolean mask of the cells that may be picked (default: all).

    Returns:
        Row indices, classes interleaved (the first pick of every class, then the second ...), so a technician who
        stops early still has every predicted class.

    Raises:
        ConfigError: ``n`` < 1 or the arrays do not match.

    Examples:
        >>> probabilities = np.array([[0.99, 0.01], [0.55, 0.45], [0.1, 0.9]])
        >>> rank_for_labelling(np.eye(3), probabilities, 2)
        [0, 2]
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the number of cells to suggest must be a whole number >= 1, got {n!r}")
    features, probabilities = np.asarray(features), np.asarray(probabilities)
    if features.ndim != 2 or probabilities.ndim != 2 or len(features) != len(probabilities):
        raise ConfigError(f"features {features.shape} and probabilities {probabilities.shape} must be one row per cell")
    rows = np.flatnonzero(np.ones(len(features), bool) if eligible is None else np.asarray(eligible, bool))
    if not len(rows):
        return []
    space = _embedding(features[rows])
    hesitation = uncertainty(probabilities[rows])
    predicted = probabilities[rows].argmax(axis=1)
    quotas = _quotas(predicted, n)
    nearest = np.full(len(rows), np.inf)  # distance to the nearest pick so far, over every class
    per_class: dict[int, list[int]] = {c: [] for c in quotas}
    taken = np.zeros(len(rows), bool)

    def pick(local: int, cls: int) -> None:
        taken[local] = True
        per_class[cls].append(local)
        np.minimum(nearest, np.linalg.norm(space - space[local], axis=1), out=nearest)

    for cls in sorted(quotas, key=lambda c: -quotas[c]):  # the typical cell of each class first
        if quotas[cls]:
            members = np.flatnonzero(predicted == cls)
            centre = space[members].mean(axis=0)
            pick(int(members[np.argmin(np.linalg.norm(space[members] - centre, axis=1))]), cls)
    while any(len(per_class[c]) < quotas[c] for c in quotas):
        for cls in sorted(quotas):
            if len(per_class[cls]) >= quotas[cls]:
                continue
            members = np.flatnonzero((predicted == cls) & ~taken)
            value = nearest[members] * (0.5 + hesitation[members])
            pick(int(members[np.argmax(value)]), cls)
    order: list[int] = []
    for rank in range(max(len(v) for v in per_class.values())):
        order.extend(int(rows[v[rank]]) for c, v in sorted(per_class.items()) if rank < len(v))
    return order


@dataclass
class Suggestion:
    """What :func:`suggest_cells` picked.

    Attributes:
        paths: the picked cells, in the order to label them.
        predicted: the model's label for each.
        uncertainty: one minus the margin between the two most likely classes, for each.
        pool: how many cells were ranked.
        skipped: cells that could not be read, with the reason.
    """

    paths: list[Path]
    predicted: list[str]
    uncertainty: list[float]
    pool: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def ranked(cls, paths: Sequence[Path], features: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
               n: int, skipped: Sequence[tuple[Path, str]] = ()) -> Suggestion:
        """The ``n`` of ``paths`` to label first (:func:`rank_for_labelling`), with the model's label and uncertainty.

        Examples:
            >>> Suggestion.ranked([Path("a.png"), Path("b.png")], np.eye(2), np.array([[0.9, 0.1], [0.4, 0.6]]),
            ...                   ["x", "y"], 1).predicted
            ['x']
        """
        order = rank_for_labelling(features, probabilities, n)
        hesitation = uncertainty(probabilities)
        return cls([paths[i] for i in order], [labels[int(probabilities[i].argmax())] for i in order],
                   [float(hesitation[i]) for i in order], len(paths), list(skipped))

    def rows(self) -> list[dict[str, Any]]:
        """One record per picked cell (rank, path, predicted, uncertainty), for CSV or JSON.

        Examples:
            >>> Suggestion([Path("a.png")], ["lymphocyte"], [0.25], 3).rows()[0]["predicted"]
            'lymphocyte'
        """
        return [{"rank": i + 1, "path": str(p), "predicted": label, "uncertainty": round(u, 4)}
                for i, (p, label, u) in enumerate(zip(self.paths, self.predicted, self.uncertainty, strict=True))]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursively, sorted; hidden files and folders left out).

    Raises:
        ConfigError: the folder does not exist.

    Examples:
        >>> len(image_files("samples/pbc_raw")) > 0
        True
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder of cell images; give the folder that holds them")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def suggest_cells(classifier: Any, cells: str | os.PathLike | Sequence[str | os.PathLike], n: int, *,
                  exclude: Sequence[str | os.PathLike] = (), batch_size: int = 32) -> Suggestion:
    """Rank a lab's unlabelled cells with a deployed model and return the ``n`` to label first.

    Args:
        classifier: a loaded :class:`~cellsdk.Classifier` whose model has a ``features`` output (every cellsdk
            artefact has one).
        cells: a folder of cell images (searched recursively) or a list of image paths.
        n: how many to suggest.
        exclude: paths not to suggest (cells already labelled).
        batch_size: images per model call.

    Raises:
        ConfigError: no readable cell, or the model has no ``features`` output.

    Examples:
        >>> from cellsdk import Classifier
        >>> picked = suggest_cells(Classifier.load(self_check=False), "samples/pbc_raw", 3)
        >>> len(picked.paths), picked.pool
        (3, 16)
    """
    paths = image_files(cells) if isinstance(cells, (str, os.PathLike)) else [Path(p) for p in cells]
    excluded = {Path(p).resolve() for p in exclude}
    paths = [p for p in paths if p.resolve() not in excluded]
    inference = classifier.inference
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    features, probabilities = [], []
    for start in range(0, len(paths), batch_size):
        prepared = []
        for path in paths[start:start + batch_size]:
            try:
                prepared.append(inference.prepare(path))
                kept.append(path)
            except CellSDKError as err:
                skipped.append((path, str(err)))
        if not prepared:
            continue
        result = inference.run(prepared)
        if "features" not in result.outputs:
            raise ConfigError(f"{classifier.path.name} has no features output to compare cells with: convert it "
                              "with cellsdk-convert (every cellsdk artefact has one)")
        features.append(np.asarray(result.outputs["features"], dtype=np.float64).reshape(len(prepared), -1))
        labels = classifier.metadata.labels
        probabilities.append(np.asarray([[p.probabilities[label] for label in labels]
                                         for p in result.predictions]))
    if not kept:
        raise ConfigError(f"{cells}: no readable cell image to suggest from"
                          + (f" ({skipped[0][1]})" if skipped else ""))
    feats, probs = np.concatenate(features), np.concatenate(probabilities)
    return Suggestion.ranked(kept, feats, probs, classifier.metadata.labels, n, skipped)

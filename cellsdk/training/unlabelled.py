"""Adaptation from a lab's unlabelled cells: BatchNorm statistics re-estimated, then self-training.

A lab has few labelled cells but many unlabelled ones (every cell it ran through ``cellsdk predict --collect`` or
``cellsdk serve --collect``). :func:`cellsdk.training.adapt` uses them in three steps, each of which can be turned
off (:class:`UnlabelledConfig`, for the ablation):

1. **Recalibrate** (``recalibrate``): every BatchNorm layer's running mean and variance are re-estimated on a mix of
   the lab's cells and the training lab's (replay) cells in equal numbers, each side drawn class-balanced (the lab's
   by its labels where it has them, else by the model's confident predictions). One set of statistics has to serve
   both labs: re-estimated on the new lab alone they lift it and sink the training lab (the shipped checkpoint,
   fp32: Tecom test 11.9 -> 43.7 %, PBC test 98.7 -> 74.3 %); on the mix Tecom reaches 41.1 % and PBC 99.0 %.
2. **Guard** (``guard``): a class-conditional Mahalanobis score (:mod:`cellsdk.guard.scores`) is fitted on the
   replay's and the labelled cells' features after recalibration; the pool's cells that score above the replay's
   99th percentile *and* among the ``atypical`` share of the pool most unlike the training data never teach
   (junk, debris, cell types the model has no class for).
3. **Self-train** (``self_train``): FixMatch (Sohn et al. 2020): each step also draws unlabelled cells, the model
   labels a weakly augmented view (flips, right-angle turns), and where it is confident (``threshold``) the
   strongly augmented view (stain, colour, scale, blur) learns that label. Where the lab gave labels, a
   pseudo-label may only be one of the lab's classes.

Examples:
    >>> UnlabelledConfig().self_train, UnlabelledConfig.ablation("recalibrate").self_train
    (True, False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsdk.errors import ConfigError, DatasetError
from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import load_image, prepare_image, to_input_array
from cellsdk.suggest import image_files
from cellsdk.training.augment import augment_image
from cellsdk.training.config import AugmentConfig
from cellsdk.training.sources import balanced_draw

__all__ = ["STEPS", "PoolState", "PoolViews", "UnlabelledConfig", "UnlabelledPool", "consistency_loss",
           "features_and_logits", "outputs", "prepare_pool", "pseudo_labels", "recalibrate_batchnorm", "strong_augment",
           "weak_augment", "write_pseudo_labelled"]

#: the parts of unlabelled adaptation, in the order the ablation turns them on (the guard acts only through
#: self-training: it decides which pool cells may teach)
STEPS = ("recalibrate", "self_train", "guard")


def weak_augment() -> AugmentConfig:
    """The view pseudo-labels come from: flips and right-angle turns only.

    Examples:
        >>> weak_augment().brightness
        0.0
    """
    return AugmentConfig.light()


def strong_augment() -> AugmentConfig:
    """The view that learns a pseudo-label: stain, colour, scale and rotation well past the training recipe's.

    Examples:
        >>> strong_augment().stain > AugmentConfig.stain_robust().stain
        True
    """
    return AugmentConfig(rotation_degrees=30.0, scale=(0.75, 1.33), translate=0.08, brightness=0.3, contrast=0.3,
                         saturation=0.3, hue=0.05, stain=0.1)


@dataclass(frozen=True)
class UnlabelledConfig:
    """How the lab's unlabelled cells are used.

    Attributes:
        recalibrate: re-estimate BatchNorm statistics on the lab's and the replay's cells, half and half.
        guard: keep cells unlike the training data out of the pseudo-labels.
        self_train: FixMatch self-training on pseudo-labels.
        threshold: the weak view's confidence a pseudo-label needs.
        weight: the unlabelled loss's weight beside the labelled one.
        per_step: unlabelled cells drawn each optimiser step.
        atypical: with ``guard``, the share of the pool most unlike the training data that never teaches.
        recalibration_cells: cells per side (lab, replay) for the BatchNorm statistics.
        limit: the most pool cells used (a seeded sample of a larger pool).
    """

    recalibrate: bool = True
    guard: bool = True
    self_train: bool = True
    threshold: float = 0.9
    weight: float = 1.0
    per_step: int = 16
    atypical: float = 0.1
    recalibration_cells: int = 512
    limit: int = 4000

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ConfigError(f"unlabelled threshold must be in (0, 1), got {self.threshold}")
        if not 0 <= self.atypical < 1:
            raise ConfigError(f"unlabelled atypical share must be in [0, 1), got {self.atypical}")
        for name in ("per_step", "recalibration_cells", "limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"unlabelled {name} must be a whole number >= 1, got {value!r}")
        if self.weight < 0:
            raise ConfigError(f"unlabelled weight must be >= 0, got {self.weight}")

    @classmethod
    def ablation(cls, upto: str) -> UnlabelledConfig:
        """The steps of :data:`STEPS` up to and including ``upto`` (``none``: the pool is not used).

        Examples:
            >>> UnlabelledConfig.ablation("self_train").self_train, UnlabelledConfig.ablation("self_train").guard
            (True, False)
        """
        if upto != "none" and upto not in STEPS:
            raise ConfigError(f"unknown unlabelled step {upto!r}: use none or one of {', '.join(STEPS)}")
        on = STEPS[:STEPS.index(upto) + 1] if upto != "none" else ()
        return cls(**{step: step in on for step in STEPS})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready.

        Examples:
            >>> UnlabelledConfig().to_dict()["threshold"]
            0.9
        """
        return dataclasses.asdict(self)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class UnlabelledPool:
    """A lab's unlabelled cells: every image under a folder, less those also among its labelled cells.

    A ``cellsdk serve --collect`` / ``cellsdk predict --collect`` folder can be given as it is: its ``unlabelled/``
    subfolder is the pool.

    Args:
        folder: the cells (searched recursively).
        exclude: labelled cells' paths; a pool image with the same bytes is left out.
        limit: the most cells kept (a seeded sample).
        seed: the sample's seed.

    Raises:
        DatasetError: no image in the folder.
    """

    def __init__(self, folder: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (), limit: int = 4000,
                 seed: int = 0):
        root = Path(folder)
        if (root / "unlabelled").is_dir():
            root = root / "unlabelled"
        paths = image_files(root)
        labelled = {_digest(Path(p)) for p in exclude}
        self.duplicates = 0
        if labelled:
            kept = [p for p in paths if _digest(p) not in labelled]
            self.duplicates = len(paths) - len(kept)
            paths = kept
        if not paths:
            raise DatasetError(f"{folder}: no unlabelled cell images (png, jpg, tif, ...) found"
                               + (" that are not also labelled" if self.duplicates else ""))
        if len(paths) > limit:
            rows = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
            paths = [paths[int(r)] for r in rows]
        self.root = root
        self.paths: list[Path] = paths

    def __len__(self) -> int:
        return len(self.paths)

    def arrays(self, rows: Sequence[int] | np.ndarray, spec: Preprocessing) -> np.ndarray:
        """The model inputs of ``rows``, without augmentation.

        Examples:
            >>> from cellsdk.metadata import Preprocessing
            >>> UnlabelledPool("samples/pbc_raw").arrays([0, 1], Preprocessing(64, "pixels", 200)).shape
            (2, 3, 64, 64)
        """
        return np.stack([to_input_array(prepare_image(load_image(self.paths[int(r)]), spec), spec) for r in rows])

    def record(self) -> dict[str, Any]:
        """What the checkpoint records about the pool.

        Examples:
            >>> UnlabelledPool("samples/pbc_raw").record()["cells"]
            16
        """
        return {"path": str(self.root), "cells": len(self.paths), "left_out_as_labelled": self.duplicates}


class PoolViews(torch.utils.data.Dataset):
    """Drawn pool rows as ``(weak view, strong view, row)`` tensors, seeded by epoch and position."""

    def __init__(self, pool: UnlabelledPool, spec: Preprocessing, rows: np.ndarray, seed: int, epoch: int):
        self.pool, self.spec, self.rows, self.seed, self.epoch = pool, spec, rows, seed, epoch
        self.weak, self.strong = weak_augment(), strong_augment()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = int(self.rows[index])
        image = prepare_image(load_image(self.pool.paths[row]), self.spec)
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        weak = augment_image(image, self.weak, rng)
        strong = augment_image(weak, self.strong, rng)
        return (torch.from_numpy(to_input_array(weak, self.spec)), torch.from_numpy(to_input_array(strong, self.spec)),
                row)


def features_and_logits(model: Any, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features (what an artefact's ``features`` output holds) and the logits, in one pass.

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> model = create_model("test_efficientnet", 3, "none")[0].eval()
        >>> [tuple(t.shape) for t in features_and_logits(model, torch.zeros(2, 3, 32, 32))][1]
        (2, 3)
    """
    features = model.forward_head(model.forward_features(inputs), pre_logits=True)
    return features, model.get_classifier()(features)


@torch.no_grad()
def outputs(model: Any, arrays: np.ndarray, device: torch.device, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) of ``arrays`` in eval mode.

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> model = create_model("test_efficientnet", 3, "none")[0]
        >>> [a.shape for a in outputs(model, np.zeros((2, 3, 32, 32), np.float32), torch.device("cpu"))][1]
        (2, 3)
    """
    model.eval()
    feats, probs = [], []
    for start in range(0, len(arrays), batch):
        f, logits = features_and_logits(model, torch.from_numpy(arrays[start:start + batch]).to(device))
        feats.append(f.float().cpu().numpy())
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(probs).astype(np.float64)


@torch.no_grad()
def recalibrate_batchnorm(model: Any, batches: Iterable[np.ndarray], device: torch.device) -> int:
    """Re-estimate every BatchNorm layer's running statistics from ``batches`` (a cumulative average over all of
    them); the weights do not change. Returns the number of images seen (0: the model has no BatchNorm).

    Examples:
        >>> layer = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
        >>> recalibrate_batchnorm(layer, [np.full((4, 3, 2, 2), 5.0, np.float32)], torch.device("cpu"))
        4
        >>> round(float(layer[0].running_mean[0]), 3)
        5.0
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative moving average: every batch weighs by its size
    model.train()
    seen = 0
    try:
        for batch in batches:
            model(torch.from_numpy(np.ascontiguousarray(batch)).to(device))
            seen += len(batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return seen


def consistency_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, trusted: torch.Tensor,
                     allowed: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled term: the weak view's confident answers (among ``allowed`` classes, on ``trusted``
    cells) are the targets of the strong view's logits.

    Returns:
        (loss averaged over the whole unlabelled batch, mask of the cells that taught, their pseudo-labels).

    Examples:
        >>> weak = torch.tensor([[9.0, 0.0], [0.0, 0.1]])
        >>> loss, mask, labels = consistency_loss(weak, torch.zeros(2, 2), torch.tensor([True, True]), torch.ones(2),
        ...                                       0.9)
        >>> mask.tolist(), labels.tolist(), round(float(loss), 4)  # log 2 on the one confident cell, over two
        ([True, False], [0, 1], 0.3466)
    """
    with torch.no_grad():
        probabilities = torch.softmax(weak_logits.float().masked_fill(allowed[None, :] == 0, -1e9), dim=1)
        confidence, labels = probabilities.max(dim=1)
        mask = (confidence >= threshold) & trusted
    masked = strong_logits.float().masked_fill(allowed[None, :] == 0, -1e9)
    per_cell = torch.nn.functional.cross_entropy(masked, labels, reduction="none")
    return (per_cell * mask.float()).sum() / max(1, len(mask)), mask, labels


@dataclass
class PoolState:
    """What :func:`prepare_pool` decided about a pool: which cells may teach, and what it measured."""

    trusted: np.ndarray
    record: dict[str, Any]


def prepare_pool(model: Any, pool: UnlabelledPool, pool_spec: Preprocessing, sources: Any, specs: list[Preprocessing],
                 lab: int | None, replay: int, device: torch.device, config: UnlabelledConfig,
                 seed: int) -> PoolState:
    """Recalibrate BatchNorm on the lab's and the replay's cells and decide which pool cells may teach.

    ``lab``: the index of the lab's labelled source in ``sources`` (None without labelled cells); ``replay``: the
    replay source's. Returns every pool cell's trust (all True without ``config.guard``) and a record for
    ``adapt.json``.

    Examples:
        >>> state = prepare_pool(model, pool, spec, sources, specs, 0, 1, torch.device("cpu"),
        ...                      UnlabelledConfig(), 0)  # doctest: +SKIP
        >>> state.record["guard"]["left_out"]  # doctest: +SKIP
        11
    """
    from cellsdk.guard.scores import fit_score

    rng = np.random.default_rng([seed, 11])
    record: dict[str, Any] = {"pool": pool.record(), "config": config.to_dict()}
    count = min(config.recalibration_cells, max(len(pool), 64))
    replay_item = sources.loaded[replay]
    lab_item = sources.loaded[lab] if lab is not None else None

    def replay_arrays(rows: np.ndarray) -> np.ndarray:
        return np.stack([to_input_array(prepare_image(replay_item.train.load(int(r)), specs[replay]), specs[replay])
                         for r in rows])

    pool_rows = np.arange(len(pool)) if len(pool) <= count else np.sort(rng.choice(len(pool), count, replace=False))
    pool_arrays = pool.arrays(pool_rows, pool_spec)
    lab_arrays = np.zeros((0, *pool_arrays.shape[1:]), np.float32)
    lab_targets = np.zeros(0, np.int64)
    if lab_item is not None and lab is not None:
        lab_arrays = np.stack([to_input_array(prepare_image(lab_item.train.load(i), specs[lab]), specs[lab])
                               for i in range(len(lab_item.train))])
        lab_targets = lab_item.train_targets
    replay_rows = balanced_draw(replay_item.train_targets, count, rng)
    replay_cells = replay_arrays(np.unique(replay_rows))

    def recalibrate(lab_side: np.ndarray) -> int:
        mixed = np.concatenate([lab_side, replay_cells[:len(lab_side)]])
        order = rng.permutation(len(mixed))
        return recalibrate_batchnorm(model, (mixed[order[i:i + 64]] for i in range(0, len(mixed), 64)), device)

    if config.recalibrate:
        # first on the lab's cells as they come, then class-balanced by labels and confident predictions
        recalibrate(np.concatenate([pool_arrays, lab_arrays]))
        _, probabilities = outputs(model, pool_arrays, device)
        predicted = probabilities.argmax(axis=1)
        classes = np.concatenate([predicted, lab_targets])
        candidates = np.concatenate([pool_arrays, lab_arrays])
        picks = balanced_draw(classes, len(candidates), rng)
        seen = recalibrate(candidates[picks])
        record["recalibration"] = {"cells": int(seen), "lab_classes_drawn": {
            int(c): int(n) for c, n in zip(*np.unique(classes[picks], return_counts=True), strict=True)}}
    trusted = np.ones(len(pool), bool)
    if config.guard:
        replay_feats, _ = outputs(model, replay_cells, device)
        replay_targets = replay_item.train_targets[np.unique(replay_rows)]
        feats = replay_feats
        targets = replay_targets
        if len(lab_arrays):
            lab_feats, _ = outputs(model, lab_arrays, device)
            feats, targets = np.concatenate([feats, lab_feats]), np.concatenate([targets, lab_targets])
        score = fit_score("mahalanobis", feats, targets, dims=min(64, len(feats) // 4))
        held = replay_arrays(balanced_draw(replay_item.val_targets, 256, rng)) if len(replay_item.val) else \
            replay_cells[:256]
        held_feats, _ = outputs(model, held, device)
        limit = float(np.quantile(score.score(np.zeros((len(held_feats), 1)), held_feats), 0.99))
        pool_scores = np.concatenate([
            score.score(np.zeros((len(chunk), 1)), outputs(model, pool.arrays(chunk, pool_spec), device)[0])
            for chunk in np.array_split(np.arange(len(pool)), max(1, len(pool) // 256))])
        atypical_cut = float(np.quantile(pool_scores, 1 - config.atypical)) if config.atypical > 0 else np.inf
        trusted = ~((pool_scores > limit) & (pool_scores >= atypical_cut))
        record["guard"] = {"score": "mahalanobis", "replay_99th_percentile": limit,
                           "pool_atypical_cut": atypical_cut if np.isfinite(atypical_cut) else None,
                           "trusted": int(trusted.sum()), "left_out": int((~trusted).sum())}
    return PoolState(trusted, record)


@torch.no_grad()
def pseudo_labels(model: Any, pool: UnlabelledPool, pool_spec: Preprocessing, trusted: np.ndarray,
                  allowed: Sequence[int], threshold: float, device: torch.device) -> np.ndarray:
    """The final model's label for every trusted pool cell it is confident about (-1 elsewhere).

    Examples:
        >>> pseudo_labels(model, pool, spec, trusted, [0, 1], 0.9, torch.device("cpu"))  # doctest: +SKIP
        array([ 1, -1,  0, ...])
    """
    labels = np.full(len(pool), -1, np.int64)
    for chunk in np.array_split(np.arange(len(pool)), max(1, len(pool) // 256)):
        _, probabilities = outputs(model, pool.arrays(chunk, pool_spec), device)
        restricted = np.zeros_like(probabilities)
        restricted[:, list(allowed)] = probabilities[:, list(allowed)]
        restricted /= np.maximum(restricted.sum(axis=1, keepdims=True), 1e-12)
        confident = (restricted.max(axis=1) >= threshold) & trusted[chunk]
        labels[chunk[confident]] = restricted.argmax(axis=1)[confident]
    return labels


def write_pseudo_labelled(pool: UnlabelledPool, labels: np.ndarray, names: Sequence[str], folder: Path) -> dict[str, int]:
    """``folder/<label>/``: links to (or copies of) the pool cells with a pseudo-label, for the guard's statistics.

    Returns the cells per label.

    Examples:
        >>> import tempfile
        >>> pool = UnlabelledPool("samples/pbc_raw")
        >>> labels = np.full(len(pool), -1); labels[:2] = [0, 1]
        >>> write_pseudo_labelled(pool, labels, ["basophil", "ig"], Path(tempfile.mkdtemp()) / "pseudo")
        {'basophil': 1, 'ig': 1}
    """
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    counts: dict[str, int] = {}
    for row in np.flatnonzero(labels >= 0):
        source = pool.paths[int(row)]
        target = folder / names[int(labels[row])] / f"{int(row):06d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(source.resolve())
        except OSError:
            shutil.copyfile(source, target)
        counts[names[int(labels[row])]] = counts.get(names[int(labels[row])], 0) + 1
    return counts

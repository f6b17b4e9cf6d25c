"""Training on several sources at once: mixed, class-balanced batches, a loss over the classes each source
labels, and per-source evaluation. Used by :func:`cellsdk.training.adapt` (a new lab plus replay of the original
data) and :func:`cellsdk.training.train_combined` (several labs from the start).

Examples:
    >>> import torch
    >>> loss = partial_label_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(2, 3))
    >>> round(float(loss), 4)  # log 3: uniform answers over three allowed classes
    1.0986
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import prepare_image, to_input_array
from cellsdk.training.augment import augment_image
from cellsdk.training.config import AugmentConfig
from cellsdk.training.sources import SourceSet, balanced_draw

__all__ = ["MixedDraws", "draw_epoch", "evaluate_sources", "optimizer_step", "partial_label_loss", "selection_score",
           "source_logits"]


class MixedDraws(torch.utils.data.Dataset):
    """The drawn ``(source, row)`` pairs of one epoch, each prepared with its source's preprocessing and augmented.

    Items are ``(input, target, source index)``.
    """

    def __init__(self, sources: SourceSet, specs: list[Preprocessing], draws: list[tuple[int, int]],
                 augment: AugmentConfig, seed: int, epoch: int):
        self.sources, self.specs, self.draws, self.augment = sources, specs, draws, augment
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        source, row = self.draws[index]
        item = self.sources.loaded[source]
        spec = self.specs[source]
        image = prepare_image(item.train.load(row), spec)
        if self.augment.enabled:
            image = augment_image(image, self.augment, np.random.default_rng([self.seed, self.epoch, index]))
        return torch.from_numpy(to_input_array(image, spec)), int(item.train_targets[row]), source


def _stratified_rows(targets: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(targets) <= limit:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    per = max(1, limit // len(classes))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:per] for c in classes]))


@torch.no_grad()
def _probabilities(model: Any, arrays: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(arrays), batch):
        logits = model(torch.from_numpy(arrays[start:start + batch]).to(device)).float()
        out.append(torch.softmax(logits, dim=1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def _arrays(split: Any, rows: np.ndarray, spec: Preprocessing) -> np.ndarray:
    return np.stack([to_input_array(prepare_image(split.load(int(r)), spec), spec) for r in rows])


def _metrics(probabilities: np.ndarray, targets: np.ndarray, labels: list[str], classes: list[int]) -> dict[str, Any]:
    if not len(targets):
        return {"images": 0}
    predicted = probabilities.argmax(axis=1)
    right = predicted == targets
    present = [c for c in classes if np.any(targets == c)]
    recall = {labels[c]: float(right[targets == c].mean()) for c in present}
    return {"images": len(targets), "accuracy": float(right.mean()),
            "balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall}


def evaluate_sources(model: Any, sources: SourceSet, specs: list[Preprocessing], device: torch.device, *,
                     limit: int | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Accuracy and balanced accuracy of a torch model on each source's validation cells.

    Examples:
        >>> evaluate_sources(model, sources, specs, torch.device("cpu"))  # doctest: +SKIP
        {'labB/adapt': {'images': 12, 'accuracy': 0.92, ...}, 'bloodmnist_128': {...}}
    """
    out = {}
    for index, item in enumerate(sources.loaded):
        rows = _stratified_rows(item.val_targets, limit, seed) if limit else np.arange(len(item.val))
        if not len(rows):
            out[item.source.name] = {"images": 0}
            continue
        probabilities = _probabilities(model, _arrays(item.val, rows, specs[index]), device)
        out[item.source.name] = _metrics(probabilities, item.val_targets[rows], sources.labels,
                                         sources.classes_of(index))
    return out


def partial_label_loss(logits: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor,
                       smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the classes each sample's source can label (``allowed``: 1 for those, 0 elsewhere).

    The softmax runs over the allowed classes only, and label smoothing spreads over them only: a source that
    holds five white-cell types says nothing about platelets, so its images neither push platelets down nor up.

    Examples:
        >>> logits = torch.tensor([[2.0, 0.0, 5.0]])
        >>> full = partial_label_loss(logits, torch.tensor([0]), torch.ones(1, 3))
        >>> part = partial_label_loss(logits, torch.tensor([0]), torch.tensor([[1.0, 1.0, 0.0]]))
        >>> round(float(full), 3), round(float(part), 3)
        (3.055, 0.127)
    """
    masked = logits.masked_fill(allowed == 0, -1e9)
    log_probabilities = torch.log_softmax(masked, dim=1)
    nll = -log_probabilities.gather(1, targets[:, None]).squeeze(1)
    if smoothing:
        uniform = -(log_probabilities * allowed).sum(1) / allowed.sum(1)
        nll = (1 - smoothing) * nll + smoothing * uniform
    return nll.mean()


def draw_epoch(sources: SourceSet, count: int, shares: Sequence[float], rng: np.random.Generator) -> list[tuple[int, int]]:
    """One epoch's ``(source, row)`` draws: ``shares[i]`` of ``count`` from source ``i``, balanced by class, shuffled.

    Examples:
        >>> draws = draw_epoch(sources, 64, [0.5, 0.5], np.random.default_rng(0))  # doctest: +SKIP
        >>> sum(1 for source, _ in draws if source == 0)  # doctest: +SKIP
        32
    """
    total = float(sum(shares))
    quotas = [round(count * share / total) for share in shares]
    quotas[0] += count - sum(quotas)
    draws: list[tuple[int, int]] = []
    for source, quota in enumerate(quotas):
        if quota > 0:
            rows = balanced_draw(sources.loaded[source].train_targets, quota, rng)
            draws.extend((source, int(r)) for r in rows)
    order = rng.permutation(len(draws))
    return [draws[i] for i in order]


@torch.no_grad()
def source_logits(model: Any, sources: SourceSet, specs: list[Preprocessing], device: torch.device, *,
                  limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits and the targets on every source's validation cells (each capped at ``limit``).

    Examples:
        >>> logits, targets = source_logits(model, sources, specs, torch.device("cpu"), limit=240)  # doctest: +SKIP
    """
    model.eval()
    logits, targets = [], []
    for index, item in enumerate(sources.loaded):
        rows = _stratified_rows(item.val_targets, limit, seed) if limit else np.arange(len(item.val))
        if not len(rows):
            continue
        arrays = _arrays(item.val, rows, specs[index])
        for start in range(0, len(arrays), 64):
            logits.append(model(torch.from_numpy(arrays[start:start + 64]).to(device)).float().cpu().numpy())
        targets.append(item.val_targets[rows])
    if not logits:
        return np.zeros((0, len(sources.labels))), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits).astype(np.float64), np.concatenate(targets)


def optimizer_step(loss: torch.Tensor, model: Any, optimizer: Any, scheduler: Any, *, clip: float,
                   what: str) -> None:
    """One step on ``loss``: refuse a non-finite loss (``what`` says where and what to do), back-propagate, clip the
    gradient norm to ``clip`` (0: no clipping), step the optimiser and the schedule.

    Examples:
        >>> model = torch.nn.Linear(2, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        >>> optimizer_step(model(torch.ones(1, 2)).sum(), model, optimizer, scheduler, clip=1.0, what="at step 1")
    """
    from cellsdk.errors import TrainingError

    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()} {what}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    scheduler.step()


def selection_score(scores: dict[str, dict[str, Any]], fallback: float) -> float:
    """The mean balanced accuracy over the sources that had held-out cells (``fallback`` when none had).

    Examples:
        >>> selection_score({"a": {"images": 4, "balanced_accuracy": 0.5}, "b": {"images": 0}}, 1.0)
        0.5
    """
    measured = [m["balanced_accuracy"] for m in scores.values() if m.get("images")]
    return float(np.mean(measured)) if measured else fallback

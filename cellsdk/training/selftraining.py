"""Self-training during :func:`cellsdk.training.adapt`: the lab's unlabelled pool, recalibrated and guarded at the
start (:func:`cellsdk.training.unlabelled.prepare_pool`), drawn class-balanced each epoch, and its FixMatch term
added to every optimiser step (:func:`cellsdk.training.unlabelled.consistency_loss`).

Examples:
    >>> run = PoolRun.start("labB/pool", UnlabelledConfig(), model, sources, specs, 0, 1, False, spec,
    ...                     torch.device("cpu"), 0)  # doctest: +SKIP
    >>> views = run.epoch(model, 12, 1)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsdk.errors import ConfigError
from cellsdk.metadata import Preprocessing
from cellsdk.training.finetune import set_batchnorm
from cellsdk.training.sources import balanced_draw
from cellsdk.training.unlabelled import (
    PoolState,
    PoolViews,
    UnlabelledConfig,
    UnlabelledPool,
    consistency_loss,
    outputs,
    prepare_pool,
    pseudo_labels,
    write_pseudo_labelled,
)

__all__ = ["PoolRun"]


class PoolRun:
    """The unlabelled pool during one :func:`adapt`: recalibrated and guarded at the start, drawn every step."""

    def __init__(self, pool: UnlabelledPool, spec: Preprocessing, config: UnlabelledConfig, state: PoolState,
                 allowed: torch.Tensor, labels: list[str], seed: int, device: torch.device):
        self.pool, self.spec, self.config, self.state = pool, spec, config, state
        self.allowed, self.labels, self.seed, self.device = allowed, labels, seed, device
        self.trusted = torch.from_numpy(state.trusted)
        self.record: dict[str, Any] = {**state.record, "epochs": []}
        self._taught = self._seen = 0
        self._classes = np.zeros(len(labels), np.int64)

    @classmethod
    def start(cls, folder: str | os.PathLike, config: UnlabelledConfig, model: Any, sources: Any,
              specs: list[Preprocessing], lab: int | None, replay: int | None, cropped: bool,
              preprocessing: Preprocessing, device: torch.device, seed: int) -> PoolRun:
        """Load the pool, recalibrate, guard (see :func:`~cellsdk.training.unlabelled.prepare_pool`).

        Examples:
            >>> PoolRun.start("labB/pool", UnlabelledConfig(), model, sources, specs, 0, 1, False, spec,
            ...               torch.device("cpu"), 0).record["pool"]["cells"]  # doctest: +SKIP
            300
        """
        from cellsdk.training.sources import Source

        if replay is None:
            raise ConfigError("adapting with unlabelled cells needs the original training data: pass --replay DATA")
        exclude = [] if lab is None else [p for split in (sources.loaded[lab].train, sources.loaded[lab].val)
                                          for p in (split.paths or [])]
        pool = UnlabelledPool(folder, exclude=exclude, limit=config.limit, seed=seed)
        spec = Source(str(folder), cropped=cropped).spec(preprocessing)
        state = prepare_pool(model, pool, spec, sources, specs, lab, replay, device, config, seed)
        allowed = torch.zeros(len(sources.labels), device=device)
        allowed[sources.classes_of(lab) if lab is not None else list(range(len(sources.labels)))] = 1.0
        logging.getLogger("cellsdk.training").info("unlabelled pool: %d cells, %d trusted", len(pool), int(state.trusted.sum()))
        return cls(pool, spec, config, state, allowed, list(sources.labels), seed, device)

    def epoch(self, model: Any, steps: int, epoch: int) -> Any:
        """This epoch's ``(weak, strong, rows)`` batches, one per optimiser step: trusted cells drawn class-balanced
        by the model's current answers (a lab's many neutrophils would otherwise teach little else).

        Examples:
            >>> weak, strong, rows = next(run.epoch(model, 12, 1))  # doctest: +SKIP
        """
        rng = np.random.default_rng([self.seed, epoch, 5])
        candidates = np.flatnonzero(self.state.trusted)
        if len(candidates) > self.config.recalibration_cells:
            candidates = np.sort(rng.choice(candidates, self.config.recalibration_cells, replace=False))
        allowed = [int(i) for i in torch.nonzero(self.allowed).flatten().tolist()]
        _, probabilities = outputs(model, self.pool.arrays(candidates, self.spec), self.device)
        answers = np.asarray(allowed)[probabilities[:, allowed].argmax(axis=1)]
        rows = candidates[balanced_draw(answers, steps * self.config.per_step, rng)]
        self._taught = self._seen = 0
        self._classes[:] = 0
        return iter(torch.utils.data.DataLoader(PoolViews(self.pool, self.spec, rows, self.seed, epoch),
                                                batch_size=self.config.per_step, shuffle=False))

    def weak_logits(self, model: Any, weak: torch.Tensor, batchnorm: str) -> torch.Tensor:
        """The weak view's logits in eval mode (no dropout), then the model back in training mode.

        Examples:
            >>> run.weak_logits(model, weak, "frozen").shape  # doctest: +SKIP
            torch.Size([16, 8])
        """
        model.eval()
        with torch.no_grad():
            logits = model(weak).float()
        model.train()
        set_batchnorm(model, batchnorm)
        return logits

    def loss(self, weak_logits: torch.Tensor, strong_logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The weighted consistency term; counts what taught.

        Examples:
            >>> loss = run.loss(weak_logits, strong_logits, rows)  # doctest: +SKIP
        """
        loss, mask, labels = consistency_loss(weak_logits, strong_logits, self.trusted[rows].to(self.device),
                                              self.allowed, self.config.threshold)
        self._taught += int(mask.sum())
        self._seen += len(mask)
        self._classes += np.bincount(labels[mask].cpu().numpy(), minlength=len(self.labels))
        return self.config.weight * loss

    def epoch_record(self) -> dict[str, Any]:
        """What taught this epoch: the share of drawn cells with a pseudo-label, and their classes.

        Examples:
            >>> run.epoch_record()  # doctest: +SKIP
            {'taught': 0.82, 'pseudo_labels': {'lymphocyte': 35, 'neutrophil': 48}}
        """
        entry = {"taught": self._taught / max(1, self._seen),
                 "pseudo_labels": {self.labels[i]: int(n) for i, n in enumerate(self._classes) if n}}
        self.record["epochs"].append(entry)
        return entry

    def finish(self, model: Any, folder: Path) -> Path | None:
        """The adapted model's confident labels on the trusted pool, written as a class folder for the guard.

        Examples:
            >>> run.finish(model, Path("runs/labB/unlabelled_pseudo_labelled"))  # doctest: +SKIP
            PosixPath('runs/labB/unlabelled_pseudo_labelled')
        """
        allowed = [int(i) for i in torch.nonzero(self.allowed).flatten().tolist()]
        labels = pseudo_labels(model.to(self.device), self.pool, self.spec, self.state.trusted, allowed,
                               self.config.threshold, self.device)
        counts = write_pseudo_labelled(self.pool, labels, self.labels, folder)
        self.record["pseudo_labelled"] = {"folder": str(folder), "cells": counts}
        return folder if sum(counts.values()) >= 2 else None

"""Combined training: one checkpoint from several labs' datasets (``cellsdk-train DATA1 DATA2 ...``).

Each source keeps its own crop state and label map and may hold only some of the classes (one lab labels five
white-cell types, another eight classes): the label list is their union, and each image's loss counts only the
classes its source can label (:func:`cellsdk.training.mixing.partial_label_loss`). Batches draw every source in
equal share, balanced by class, so a small lab is not drowned by a large one. Validation, the best epoch and the
report are per source.

Examples:
    >>> from cellsdk.training import TrainConfig
    >>> from cellsdk.training.sources import Source
    >>> result = train_combined([Source.parse("bloodmnist_128", cropped=True), Source.parse("labB")],
    ...                         "runs/combined", TrainConfig.quick())  # doctest: +SKIP
    >>> sorted(result.per_source)  # doctest: +SKIP
    ['bloodmnist_128', 'labB']
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsdk._io import write_json
from cellsdk._progress import progress_bar
from cellsdk.errors import ConfigError, InvalidImageError, TrainingError
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.training.checkpoint import save_checkpoint
from cellsdk.training.config import TrainConfig
from cellsdk.training.mixing import (
    MixedDraws,
    draw_epoch,
    evaluate_sources,
    optimizer_step,
    partial_label_loss,
    selection_score,
)
from cellsdk.training.models import create_model
from cellsdk.training.sources import Source, SourceSet
from cellsdk.training.torchdata import pick_device

__all__ = ["CombinedResult", "format_per_source", "train_combined"]

log = logging.getLogger("cellsdk.training")


@dataclass
class CombinedResult:
    """What :func:`train_combined` produced: the checkpoint, per-source validation figures and the history."""

    run_dir: Path
    best_checkpoint: Path
    per_source: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    notes: list[str]


def _union_labels(sources: Sequence[Source], labels: str | None) -> list[str]:
    from cellsdk.datasets import load_dataset
    from cellsdk.labelmaps import resolve_label_map

    if labels:
        return list(resolve_label_map(labels))
    union: list[str] = []
    for source in sources:
        for name in load_dataset(source.path, labels=source.labels, check_files=False).labels:
            if name not in union:
                union.append(name)
    return union


def train_combined(sources: Sequence[Source], out_dir: str | os.PathLike, config: TrainConfig | None = None, *,
                   progress: bool = True) -> CombinedResult:
    """Train one model on several sources; write ``best.safetensors`` (every source recorded) and a per-source report.

    ``config`` is the usual :class:`TrainConfig`: an epoch is as many images as the sources' training splits
    hold together; ``config.labels`` fixes the label order (default: the union, in the order sources name them).

    Raises:
        DatasetError, ConfigError, TrainingError: with what to fix.

    Examples:
        >>> train_combined([Source.parse("labA"), Source.parse("labB")], "runs/ab")  # doctest: +SKIP
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    if len(sources) < 2:
        raise ConfigError("combined training takes two or more datasets; for one, use cellsdk-train DATA")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out}: output folder is not writable ({err.strerror or err}); choose another --out") from None
    torch.manual_seed(config.seed)
    labels = _union_labels(sources, config.labels)
    sources_set = SourceSet(sources, labels, val_fraction=config.val_fraction or 0.2, seed=config.seed)
    device = pick_device(config.device)
    model, pretrained = create_model(config.arch, len(labels), config.pretrained, config.input_size)
    model = model.to(device)
    preprocessing = Preprocessing(input_size=config.input_size, crop_mode=config.crop_mode,
                                  crop_value=config.crop_value, resize_filter=config.resize_filter,
                                  mean=pretrained.mean, std=pretrained.std)  # type: ignore[arg-type]
    specs = [item.source.spec(preprocessing) for item in sources_set.loaded]
    allowed = torch.zeros((len(sources_set.loaded), len(labels)), device=device)
    for index in range(len(sources_set.loaded)):
        allowed[index, sources_set.classes_of(index)] = 1.0
    per_epoch = sum(len(item.train) for item in sources_set.loaded)
    steps = max(1, per_epoch // config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total, warmup = steps * config.epochs, int(config.warmup_epochs * steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total - warmup)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = np.random.default_rng(config.seed)
    shares = [1.0] * len(sources_set.loaded)
    history: list[dict[str, Any]] = []
    best_score, best_epoch = -1.0, 0
    records = [sources_set.record(i, preprocessing) for i in range(len(sources_set.loaded))]
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        draws = draw_epoch(sources_set, steps * config.batch_size, shares, rng)
        loader = torch.utils.data.DataLoader(MixedDraws(sources_set, specs, draws, config.augment, config.seed, epoch),
                                             batch_size=config.batch_size, shuffle=False, num_workers=config.workers)
        model.train()
        bar = progress_bar(len(draws), f"epoch {epoch}/{config.epochs}", progress)
        loss_sum = 0.0
        try:
            for inputs, targets, source in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                loss = partial_label_loss(model(inputs).float(), targets, allowed[source.to(device)],
                                          config.label_smoothing)
                optimizer_step(loss, model, optimizer, scheduler, clip=config.clip_grad_norm,
                               what=f"at epoch {epoch}: lower --lr")
                loss_sum += float(loss.detach()) * len(targets)
                bar.update(len(targets))
        except InvalidImageError as err:
            raise TrainingError(f"bad training image: {err}") from None
        finally:
            bar.close()
        scores = evaluate_sources(model, sources_set, specs, device, seed=config.seed)
        score = selection_score(scores, float(epoch))
        history.append({"epoch": epoch, "train_loss": loss_sum / max(1, len(draws)), "val": scores, "score": score,
                        "seconds": time.perf_counter() - epoch_start})
        log.info("epoch %d: loss %.4f, %s", epoch, history[-1]["train_loss"],
                 ", ".join(f"{k} {v.get('balanced_accuracy', float('nan')):.3f}" for k, v in scores.items()))
        if score >= best_score:
            best_score, best_epoch = score, epoch
            for record in records:
                record["val"] = scores.get(str(record["name"]))
            metadata = ModelMetadata(
                labels=tuple(labels), arch=pretrained.arch, preprocessing=preprocessing,
                reference_metrics={f"val_balanced_accuracy[{k}]": v["balanced_accuracy"] for k, v in scores.items()
                                   if v.get("images")},
                dataset=" + ".join(f"{r['name']} ({r['images']['train']} train, {r['images']['val']} val)"
                                   for r in records),
                training={"config": config.to_dict(), "pretrained": pretrained.to_dict(), "epoch": epoch,
                          "sources": records, "loss": "cross-entropy over the classes each source labels"},
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            save_checkpoint(out / "best.safetensors", model, metadata)
    per_source = next(h for h in history if h["epoch"] == best_epoch)["val"]
    seconds = time.perf_counter() - started
    write_json(out / "history.json", history)
    write_json(out / "sources.json", {"sources": records, "best_epoch": best_epoch, "per_source": per_source,
                                      "notes": sources_set.notes, "seconds": seconds})
    return CombinedResult(out, out / "best.safetensors", per_source, history, best_epoch, seconds, sources_set.notes)


def format_per_source(per_source: dict[str, dict[str, Any]]) -> str:
    """One line per source: held-out cells, accuracy, balanced accuracy and the weakest class.

    Examples:
        >>> print(format_per_source({"labB": {"images": 8, "accuracy": 0.75, "balanced_accuracy": 0.7,
        ...                                   "recall": {"monocyte": 0.5, "neutrophil": 0.9}}}))
        labB: 8 held-out cells, accuracy 75.0 %, balanced 70.0 %, weakest monocyte 50.0 %
    """
    lines = []
    for name, metrics in per_source.items():
        if not metrics.get("images"):
            lines.append(f"{name}: no held-out cells")
            continue
        weakest = min(metrics["recall"].items(), key=lambda item: item[1])
        lines.append(f"{name}: {metrics['images']} held-out cells, accuracy {100 * metrics['accuracy']:.1f} %, "
                     f"balanced {100 * metrics['balanced_accuracy']:.1f} %, weakest {weakest[0]} "
                     f"{100 * weakest[1]:.1f} %")
    return "\n".join(lines)

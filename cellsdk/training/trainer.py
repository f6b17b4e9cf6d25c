"""``cellsdk-train``: fine-tune a timm backbone and write checkpoints that carry their metadata.

Examples:
    >>> from cellsdk.training import TrainConfig, train
    >>> result = train("samples/bloodmnist_128", "runs/demo", TrainConfig.quick())  # doctest: +SKIP
    >>> result.best_checkpoint  # doctest: +SKIP
    PosixPath('runs/demo/best.safetensors')
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsdk._io import WRITE_PROBE, atomic_path, make_writable_folder, parse_json, write_json
from cellsdk._progress import progress_bar
from cellsdk.datasets import ImageDataset, carve_validation, load_dataset
from cellsdk.errors import ConfigError, InvalidImageError, TrainingError
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.metrics import classification_report
from cellsdk.training.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from cellsdk.training.config import TrainConfig
from cellsdk.training.distill import distillation_loss
from cellsdk.training.models import PretrainedSource, create_model, preflight, training_layout
from cellsdk.training.torchdata import (
    IndexedDataset,
    SplitDataset,
    autocast,
    make_loader,
    pick_amp,
    pick_device,
    predict_split,
)

__all__ = ["TrainResult", "resume_training", "train"]

log = logging.getLogger("cellsdk.training")

BEST, LAST, STATE, CONFIG, HISTORY, CURVES, DUPLICATES = (
    "best.safetensors", "last.safetensors", "last_state.pt", "config.json", "history.json", "training_curves.png",
    "duplicates.json",
)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: the checkpoint with the best validation macro-F1.
        last_checkpoint: the checkpoint after the last epoch.
        history: one record per epoch.
        best_epoch: the epoch of the best checkpoint.
        best_metrics: validation metrics of the best checkpoint.
        seconds: wall time of this call.
        stopped_early: whether early stopping ended the run.
    """

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_metrics: dict[str, float]
    seconds: float
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _class_weights(dataset: ImageDataset, mode: str, device: torch.device) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = dataset.split("train").class_counts(dataset.num_classes).astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _head_prefix(model: Any) -> str:
    return getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")


def _set_backbone_frozen(model: Any, frozen: bool) -> None:
    """Freeze (or release) everything but the classifier head; frozen BatchNorm keeps its statistics."""
    head = _head_prefix(model)
    for name, param in model.named_parameters():
        if not name.startswith(f"{head}."):
            param.requires_grad_(not frozen)
    if frozen:
        for name, module in model.named_modules():
            if not name.startswith(head) and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation parameters (1-D tensors)."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _prepare_run_dir(run_dir: Path) -> None:
    try:
        make_writable_folder(run_dir)
    except OSError as err:
        raise ConfigError(f"{run_dir}: output folder is not writable ({err.strerror or err}); choose another --out") from None


def train(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``config.arch`` on a dataset and write a run folder.

    The run folder holds ``best.safetensors`` and ``last.safetensors``
    (weights + metadata), ``last_state.pt`` (optimiser state for
    ``resume``), ``config.json``, ``history.json`` and ``training_curves.png``.

    Args:
        data: a ``.npz`` file or an image folder (see :func:`cellsdk.datasets.load_dataset`).
        out_dir: the run folder.
        config: the recipe; default :class:`TrainConfig` ().
        resume: continue from ``out_dir``'s last checkpoint with the stored recipe;
            only ``config.epochs`` is taken from ``config`` (to extend the run).
        progress: show a progress bar per epoch.

    Raises:
        DatasetError, ConfigError, CheckpointError, TrainingError: with what to fix.

    Examples:
        >>> train("data.npz", "runs/a", TrainConfig.quick(arch="test_efficientnet", pretrained="none"))  # doctest: +SKIP
    """
    run_dir = Path(out_dir)
    existed = run_dir.exists()
    before = {p.name for p in run_dir.iterdir()} if existed and run_dir.is_dir() else set()
    try:
        return _train(data, run_dir, config, resume=resume, progress=progress)
    except BaseException:
        _remove_unfinished(run_dir, existed, before)
        raise


def _remove_unfinished(run_dir: Path, existed: bool, before: set[str]) -> None:
    """After a run failed before its first epoch was saved, remove what it wrote (the folder, if it made it)."""
    if not run_dir.is_dir() or (LAST not in before and (run_dir / LAST).exists()):
        return  # at least one epoch was saved: keep it, it can be resumed
    for name in (CONFIG, DUPLICATES, WRITE_PROBE):
        if name not in before:
            (run_dir / name).unlink(missing_ok=True)
    if not existed:
        try:
            run_dir.rmdir()  # only if empty: nothing of the user's is removed
        except OSError:
            pass


def _train(data: str | os.PathLike, run_dir: Path, config: TrainConfig | None, *, resume: bool,
           progress: bool) -> TrainResult:
    started = time.perf_counter()
    state: dict[str, Any] | None = None
    if resume:
        config, state = _load_resume(run_dir, config.epochs if config else None)
    config = config or TrainConfig()
    _prepare_run_dir(run_dir)
    _seed_everything(config.seed)
    dataset = load_dataset(data, labels=config.labels, seed=config.seed)
    if config.val_fraction is not None:
        if dataset.layout == "class-folders":
            raise ConfigError(f"{data}: class folders without split folders are split into train / val / test "
                              "automatically; --val-fraction is for data with a train split but no val split")
        if "val" in dataset.splits:
            raise ConfigError(f"{data}: has its own val split; leave out --val-fraction")
        dataset = carve_validation(dataset, config.val_fraction, config.seed)
    train_split = dataset.split("train")
    if "val" not in dataset.splits:
        raise ConfigError(f"{data}: no validation split; add a val/ folder (or val_* arrays), or set one aside "
                          "from train with --val-fraction 0.1")
    val_split = dataset.split("val")
    if state is not None and tuple(state["labels"]) != dataset.labels:
        raise ConfigError(f"{run_dir}: the run was trained on classes {state['labels']}, the data has {list(dataset.labels)}")

    device = pick_device(config.device)
    amp = pick_amp(config.amp, device)
    channels_last, layout_note = training_layout(config.arch, config.channels_last)
    if layout_note:
        log.warning("%s", layout_note)
        config = dataclasses.replace(config, channels_last=channels_last)  # config.json records what was used
    if state is None:
        model, source = create_model(config.arch, dataset.num_classes, config.pretrained, config.input_size)
        preflight(model.to(device), config.arch, config.input_size, channels_last=channels_last, device=device)
    else:  # the stored arch may be an offline twin of config.arch, so rebuild from the checkpoint itself
        source = PretrainedSource(**{**state["pretrained"], "mean": tuple(state["pretrained"]["mean"]),
                                     "std": tuple(state["pretrained"]["std"])})
        model, _ = load_checkpoint(run_dir / LAST)
    preprocessing = Preprocessing(
        input_size=config.input_size, crop_mode=config.crop_mode, crop_value=config.crop_value,
        resize_filter=config.resize_filter, mean=source.mean, std=source.std,  # type: ignore[arg-type]
    )
    train_spec = preprocessing.without_crop() if config.data_cropped else preprocessing
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    duplicates = _check_duplicates(dataset, run_dir) if config.check_duplicates else None

    augmented = SplitDataset(train_split, train_spec, config.augment, config.seed)
    train_data: SplitDataset | IndexedDataset = augmented
    val_data = SplitDataset(val_split, train_spec)
    distill: tuple[torch.Tensor, list[dict[str, Any]]] | None = None
    if config.teachers:  # every teacher runs once over the training images, with its own preprocessing
        from cellsdk.training.distill import teacher_targets

        distill = teacher_targets(config.teachers, train_split, dataset.labels, data_cropped=config.data_cropped,
                                  temperature=config.distill_temperature, batch_size=config.batch_size * 2,
                                  device=device, progress=progress)
        train_data = IndexedDataset(augmented)
    batches_per_epoch = len(make_loader(train_data, config.batch_size, shuffle=True))
    steps_per_epoch = math.ceil(batches_per_epoch / config.accumulate)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total_steps, int(config.warmup_epochs * steps_per_epoch), config.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    criterion = torch.nn.CrossEntropyLoss(
        weight=_class_weights(dataset, config.class_weights, device), label_smoothing=config.label_smoothing
    )
    history: list[dict[str, Any]] = []
    start_epoch, best_score, best_epoch, stale = 1, -1.0, 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        best_score, best_epoch, stale = float(state["best_score"]), int(state["best_epoch"]), int(state["stale"])
        if start_epoch > config.epochs:
            raise TrainingError(
                f"{run_dir}: nothing to do, the run already has {start_epoch - 1} epochs; raise --epochs to extend it"
            )
    write_json(run_dir / CONFIG, config.to_dict())

    pruning = _inherited_pruning(source)  # read once: every epoch's checkpoint carries it forward

    def metadata_for(epoch: int, metrics: dict[str, float]) -> ModelMetadata:
        return ModelMetadata(
            labels=dataset.labels, arch=source.arch, preprocessing=preprocessing,
            reference_metrics={"val_accuracy": metrics["val_accuracy"], "val_macro_f1": metrics["val_macro_f1"]},
            dataset=f"{dataset.source} ({dataset.layout}; train {len(train_split)}, val {len(val_split)})",
            training={"config": config.to_dict(), "pretrained": source.to_dict(), "epoch": epoch,
                      "data_cropped": config.data_cropped,
                      **({"pruning": {**pruning, "fine_tuned_epochs": epoch}} if pruning else {}),
                      **({"distillation": {"teachers": distill[1], "weight": config.distill_weight,
                                           "temperature": config.distill_temperature,
                                           "targets": "offline: each teacher's probabilities on the un-augmented "
                                                      "training images, averaged"}} if distill else {}),
                      **({"duplicates_across_splits": duplicates} if duplicates is not None else {})},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    log.info("training %s (%s) on %s: %d train / %d val images, %d classes, device %s, amp %s",
             source.arch, source.kind, data, len(train_split), len(val_split), dataset.num_classes, device, amp)
    stopped_early = False
    for epoch in range(start_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        frozen = epoch <= config.freeze_epochs
        model.train()
        _set_backbone_frozen(model, frozen)
        loader = make_loader(train_data, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                             workers=config.workers, pin_memory=device.type == "cuda")
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout / drop-path draws depend on the epoch only
        train_loss = _train_one_epoch(model, loader, optimizer, scheduler, scaler, criterion, device, amp, config,
                                      steps_per_epoch, epoch, progress, frozen,
                                      soft=distill[0].to(device) if distill else None)
        bar = progress_bar(len(val_data), f"epoch {epoch}/{config.epochs} val", progress)
        probabilities, targets, val_loss = predict_split(
            model, make_loader(val_data, config.batch_size * 2, shuffle=False, workers=config.workers,
                               pin_memory=device.type == "cuda"),
            device, amp, channels_last=config.channels_last, progress=bar)
        bar.close()
        if not math.isfinite(val_loss):
            raise TrainingError(
                f"validation loss became {val_loss} after epoch {epoch}: use --amp off or --no-channels-last "
                "(bf16 channels-last kernels can fail on tiny feature maps), or lower --lr"
            )
        report = classification_report(targets, probabilities, dataset.labels)
        record = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"],
            "val_min_recall": report["min_recall"], "val_ece": report["ece"],
            "lr": optimizer.param_groups[0]["lr"], "frozen_backbone": frozen,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        improved = report["macro_f1"] > best_score
        if improved:
            best_score, best_epoch, stale = report["macro_f1"], epoch, 0
            save_checkpoint(run_dir / BEST, model, metadata_for(epoch, record))
        else:
            stale += 1
        save_checkpoint(run_dir / LAST, model, metadata_for(epoch, record))
        with atomic_path(run_dir / STATE) as tmp:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "epoch": epoch, "best_score": best_score,
                        "best_epoch": best_epoch, "stale": stale, "history": history,
                        "labels": list(dataset.labels), "pretrained": source.to_dict()}, tmp)
        write_json(run_dir / HISTORY, history)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, val macro-F1 %.4f%s (%.1f s)",
                 epoch, train_loss, val_loss, report["accuracy"], report["macro_f1"],
                 " *best*" if improved else "", record["seconds"])
        if config.patience and stale >= config.patience:
            log.info("early stopping: no better validation macro-F1 for %d epochs", stale)
            stopped_early = True
            break
    _plot_curves(history, run_dir / CURVES)
    best = next(h for h in history if h["epoch"] == best_epoch)
    return TrainResult(run_dir, run_dir / BEST, run_dir / LAST, history, best_epoch,
                       {k: best[k] for k in ("val_accuracy", "val_macro_f1", "val_min_recall", "val_ece")},
                       time.perf_counter() - started, stopped_early)


def _inherited_pruning(source: Any) -> dict[str, Any] | None:
    """The pruning record of the cellsdk checkpoint a run fine-tunes (the shape its checkpoints load with)."""
    if source.kind != "checkpoint":
        return None
    from cellsdk.artefacts.checkpoints import read_checkpoint_metadata

    return read_checkpoint_metadata(source.detail).training.get("pruning") or None


def resume_training(run_dir: str | os.PathLike, data: str | os.PathLike, *, epochs: int | None = None,
                    progress: bool = True) -> TrainResult:
    """Continue an interrupted run from its last checkpoint, optionally to more epochs.

    Examples:
        >>> resume_training("runs/a", "data.npz", epochs=20)  # doctest: +SKIP
    """
    override = TrainConfig(epochs=epochs) if epochs else None
    return train(data, run_dir, override, resume=True, progress=progress)


_STATE_KEYS = {"optimizer", "scheduler", "scaler", "epoch", "best_score", "best_epoch", "stale", "history", "labels",
               "pretrained"}


def _check_duplicates(dataset: Any, run_dir: Path) -> dict[str, int]:
    """Warn about held-out images that copy training images; write every pair to duplicates.json."""
    from cellsdk.training.duplicates import find_cross_split_duplicates

    report = find_cross_split_duplicates(dataset)
    write_json(run_dir / DUPLICATES, report.to_dict())
    if report.pairs:
        log.warning("warning: %s (all pairs: %s)", report.summary(), run_dir / DUPLICATES)
    else:
        log.info("%s", report.summary())
    return report.counts()


def _load_resume(run_dir: Path, epochs: int | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The stored config (with ``epochs`` raised if given) and the optimiser state of a run."""
    config_path, state_path = run_dir / CONFIG, run_dir / STATE
    if not (config_path.is_file() and state_path.is_file() and (run_dir / LAST).is_file()):
        raise ConfigError(f"{run_dir}: nothing to resume (no config.json, last.safetensors and last_state.pt)")
    try:
        stored = TrainConfig.from_dict(parse_json(config_path.read_bytes()))
    except (ValueError, OSError) as err:
        raise ConfigError(f"{config_path}: cannot resume, the run's config is unreadable ({err})") from None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(state_path, map_location="cpu", weights_only=True)
    except (ValueError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        text = str(err).strip()
        if state_path.stat().st_size == 0:
            why = "the file is empty"
        elif "weights only" in text.lower() or isinstance(err, pickle.UnpicklingError):
            why = "it holds Python objects, not only tensors; it was not loaded"
        else:
            why = text.splitlines()[0][:100] if text else type(err).__name__
        raise ConfigError(f"{state_path}: not a training state cellsdk wrote ({why}); start a new run "
                          "(or restore the run folder's own last_state.pt)") from None
    if not isinstance(state, dict) or not set(state) >= _STATE_KEYS:
        raise ConfigError(f"{state_path}: not a training state cellsdk wrote (no epoch / optimiser state); "
                          "start a new run")
    weights_epoch = read_checkpoint_metadata(run_dir / LAST).training.get("epoch")
    if weights_epoch != state.get("epoch"):  # stopped between the two writes of an epoch
        raise ConfigError(
            f"{run_dir}: last.safetensors is from epoch {weights_epoch} but last_state.pt from epoch "
            f"{state.get('epoch')}; the run stopped mid-save and cannot resume exactly: start a new run"
        )
    if epochs is not None:
        stored = stored.replace(epochs=epochs)
    return stored, state


def _train_one_epoch(model: Any, loader: Any, optimizer: Any, scheduler: Any, scaler: Any, criterion: Any,
                     device: torch.device, amp: torch.dtype | None, config: TrainConfig, steps: int, epoch: int,
                     progress: bool, frozen: bool, soft: torch.Tensor | None = None) -> float:
    bar = progress_bar(min(len(loader.dataset), steps * config.accumulate * config.batch_size),
                    f"epoch {epoch}/{config.epochs}{' (head only)' if frozen else ''}", progress)
    loss_sum, seen, step, micro = 0.0, 0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for inputs, targets, *index in loader:  # an IndexedDataset adds each image's index (distillation)
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if config.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = model(inputs).float()
                if soft is not None:
                    loss = distillation_loss(logits, targets, soft[index[0].to(soft.device)], criterion,
                                             weight=config.distill_weight, temperature=config.distill_temperature)
                else:
                    loss = criterion(logits, targets)
            if not torch.isfinite(loss.detach()):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step}: lower --lr, or use --amp off "
                    "or --no-channels-last"
                )
            scaler.scale(loss / config.accumulate).backward()
            micro += 1
            loss_sum += loss.detach().item() * len(targets)
            seen += len(targets)
            bar.update(len(targets))
            if micro % config.accumulate == 0:
                _optimizer_step(optimizer, scheduler, scaler, trainable, config.clip_grad_norm)
                step += 1
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if step >= steps:
                    break
        else:
            if micro % config.accumulate:
                _optimizer_step(optimizer, scheduler, scaler, trainable, config.clip_grad_norm)
    except InvalidImageError as err:
        raise TrainingError(f"bad training image: {err}") from None
    finally:
        bar.close()
    return loss_sum / max(seen, 1)


def _optimizer_step(optimizer: Any, scheduler: Any, scaler: Any, params: list, clip: float) -> None:
    if clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    from cellsdk.plots import plot_training_curves

    plot_training_curves(history, path)

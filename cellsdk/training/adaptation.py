"""``cellsdk adapt``: fine-tune a cellsdk checkpoint on a few labelled cells from another lab.

A lab with its own microscope, camera and stain labels a handful of cells per class (a folder of class
subfolders). :func:`adapt` fine-tunes the checkpoint on them, mixing in the original training data
(``replay``: sampled in balance per source and class, so the original lab keeps its accuracy), records every
source in the checkpoint's metadata, and (unless ``convert=False``) converts it exactly as
``cellsdk-convert --quantize int8`` would, with the out-of-distribution guard fitted over both labs and every
artefact checked on each lab's held-out cells (:mod:`cellsdk.training.adapt_convert`).

The recipe (:class:`AdaptConfig`) was chosen by measurement on two development labs (the closing note of
issue 29 and ``docs/guide/adapt.md`` give the figures): every layer trains at a low learning rate while
BatchNorm keeps the original statistics, with the stain-robust augmentation; the model also learns to look
at cells rescaled to the training lab's size (``Preprocessing.scale_range``) wherever the new lab's
magnification is off. :meth:`AdaptConfig.for_cells` picks the preset for the number of labelled cells.

Examples:
    >>> from cellsdk.training.adaptation import AdaptConfig, adapt
    >>> AdaptConfig.for_cells(10).epochs
    10
    >>> result = adapt("models/bloodmnist_effnet_lite0_128.safetensors", "labB/adapt", "runs/labB",
    ...                replay="bloodmnist_128", replay_cropped=True)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsdk._io import write_json
from cellsdk._progress import progress_bar
from cellsdk.errors import ConfigError, InvalidImageError, TrainingError
from cellsdk.metadata import Preprocessing
from cellsdk.training.checkpoint import load_checkpoint, save_checkpoint
from cellsdk.training.config import AugmentConfig
from cellsdk.training.finetune import fit_scale_range, fit_stain, grow_head, set_batchnorm, trainable
from cellsdk.training.mixing import (
    MixedDraws,
    draw_epoch,
    evaluate_sources,
    optimizer_step,
    partial_label_loss,
    selection_score,
    source_logits,
)
from cellsdk.training.selftraining import PoolRun
from cellsdk.training.sources import Source, SourceSet
from cellsdk.training.torchdata import pick_device
from cellsdk.training.unlabelled import UnlabelledConfig

__all__ = ["AdaptConfig", "AdaptResult", "adapt"]

log = logging.getLogger("cellsdk.training")

LAYERS = ("all", "head", "top")
BATCHNORM = ("frozen", "train")


@dataclass(frozen=True)
class AdaptConfig:
    """The adaptation recipe.

    Attributes:
        epochs: passes of ``steps_per_epoch`` optimiser steps.
        steps_per_epoch: optimiser steps per epoch (batches are drawn, not enumerated: the new lab's few cells
            are seen many times, the replay data in a fresh sample each step).
        batch_size: images per step.
        replay_share: share of each batch drawn from the replay data (when given).
        lr: peak learning rate (AdamW; linear warm-up over the first epoch, cosine decay).
        head_lr_scale: the classifier head's learning rate as a multiple of ``lr``.
        weight_decay: AdamW weight decay.
        layers: ``all`` (every layer), ``top`` (the last blocks and the head) or ``head``.
        batchnorm: ``frozen`` keeps the original BatchNorm statistics; ``train`` updates them on the mixed batches.
        augment: training augmentation (default: the stain-robust preset).
        label_smoothing: cross-entropy label smoothing.
        distill: weight of a distillation term on the replay images (KL divergence from the original model's
            answers at temperature 2, "learning without forgetting"): keeps the original lab's answers, not only
            its labels. 0 turns it off.
        scale: fit a scale range from the replay data so inputs at another magnification are rescaled.
        stain_normalise: add Reinhard stain normalisation to the training lab's colours (fitted on the replay data).
        val_fraction: share of each new-lab class held out for validation when DATA has no val split.
        val_limit: cap on the replay validation images checked each epoch (stratified).
        seed: sampling, augmentation and carve seed.
        device: ``auto``, ``cpu``, ``cuda`` ...
    """

    epochs: int = 10
    steps_per_epoch: int = 12
    batch_size: int = 32
    replay_share: float = 0.5
    lr: float = 1e-3
    head_lr_scale: float = 5.0
    weight_decay: float = 0.01
    layers: str = "all"
    batchnorm: str = "frozen"
    augment: AugmentConfig = field(default_factory=AugmentConfig.stain_robust)
    label_smoothing: float = 0.1
    distill: float = 0.0
    scale: bool = True
    stain_normalise: bool = False
    val_fraction: float = 0.3
    val_limit: int = 240
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not 0 <= self.replay_share < 1:
            raise ConfigError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if not (self.lr > 0 and self.head_lr_scale > 0 and self.weight_decay >= 0):
            raise ConfigError("lr and head_lr_scale must be > 0, weight_decay >= 0")
        if self.layers not in LAYERS:
            raise ConfigError(f"layers {self.layers!r} is unknown: use one of {', '.join(LAYERS)}")
        if self.batchnorm not in BATCHNORM:
            raise ConfigError(f"batchnorm {self.batchnorm!r} is unknown: use frozen or train")
        if not 0 < self.val_fraction < 0.9:
            raise ConfigError(f"val_fraction must be in (0, 0.9), got {self.val_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def for_cells(cls, per_class: int, *, pool: bool = False, **overrides: Any) -> AdaptConfig:
        """The preset for ``per_class`` labelled cells per class: few (≤ 10), some (≤ 50) or many; ``pool``: an
        unlabelled pool is given too.

        More cells: more steps (each cell is still seen a similar number of times) and a little more freedom. With
        a pool, the learning rate is 3e-4 (the pseudo-labels add signal; at 1e-3 they cost the training lab 8
        points on Tecom) and small sets train 8 epochs (each step also runs the pool's two views).

        Examples:
            >>> AdaptConfig.for_cells(5).steps_per_epoch < AdaptConfig.for_cells(100).steps_per_epoch
            True
            >>> AdaptConfig.for_cells(10, pool=True).lr
            0.0003
        """
        if per_class <= 10:
            base: dict[str, Any] = {"epochs": 8} if pool else {}
        elif per_class <= 50:
            base = {"epochs": 12, "steps_per_epoch": 20}
        else:
            base = {"epochs": 15, "steps_per_epoch": 40}
        if pool:
            base["lr"] = 3e-4
        return cls(**{**base, **overrides})

    @classmethod
    def generalist(cls, **overrides: Any) -> AdaptConfig:
        """The cross-lab recipe that makes a base model's successor from several labs' labelled cells and the
        training lab's data (the leave-one-lab-out study): the cross-lab augmentation, BatchNorm statistics learned
        on the mixed batches (every lab, not the training lab's alone), the training lab's answers kept by
        distillation on its replay images, and the scale step.

        Examples:
            >>> AdaptConfig.generalist().batchnorm, AdaptConfig.generalist().augment.jpeg > 0
            ('train', True)
        """
        base: dict[str, Any] = {"epochs": 6, "steps_per_epoch": 30, "batch_size": 32, "replay_share": 0.5,
                                "lr": 3e-4, "batchnorm": "train", "distill": 0.5,
                                "augment": AugmentConfig.cross_lab(), "val_fraction": 0.2}
        return cls(**{**base, **overrides})

    def replace(self, **changes: Any) -> AdaptConfig:
        """A validated copy with some fields changed.

        Examples:
            >>> AdaptConfig().replace(epochs=3).epochs
            3
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        Examples:
            >>> AdaptConfig().to_dict()["layers"]
            'all'
        """
        out = dataclasses.asdict(self)
        out["augment"]["scale"] = list(self.augment.scale)
        return out


@dataclass
class AdaptResult:
    """What :func:`adapt` produced.

    Attributes:
        out_dir: the output folder.
        checkpoint: ``out_dir/best.safetensors``.
        before, after: per source, metrics on its held-out (validation) cells: the original model with its own
            preprocessing, then the adapted one.
        history: one record per epoch.
        seconds: wall time of the fine-tuning (conversion excluded).
        notes: what adapt decided on the user's behalf (carved validation, tiny classes, grown labels).
        conversion: the conversion folder's manifest, when converted.
        unlabelled: with an unlabelled pool, what was done with it (recalibration, guard, pseudo-labels per epoch).
        deployed_before: when the checkpoint is the one the shipped model was converted from, that deployed model
            (with its guard) on each source's held-out cells: accuracy and share flagged before adapting.
    """

    out_dir: Path
    checkpoint: Path
    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    seconds: float
    notes: list[str]
    conversion: dict[str, Any] | None = None
    deployed_before: dict[str, dict[str, Any]] | None = None
    unlabelled: dict[str, Any] | None = None


def _calibrate(model: Any, sources: SourceSet, specs: list[Preprocessing], device: torch.device,
               config: AdaptConfig) -> float | None:
    """Fit a temperature on the held-out cells of every source and fold it into the head (None: too few cells)."""
    from cellsdk.metrics import fit_temperature
    from cellsdk.training.calibrate import MIN_IMAGES, fold_temperature

    logits, targets = source_logits(model, sources, specs, device, limit=config.val_limit, seed=config.seed)
    if len(targets) < MIN_IMAGES:
        return None
    temperature = float(fit_temperature(logits, targets))
    fold_temperature(model, temperature)
    return temperature


def adapt(checkpoint: str | os.PathLike, data: str | os.PathLike | None, out_dir: str | os.PathLike, *,
          unlabelled: str | os.PathLike | None = None, unlabelled_config: UnlabelledConfig | None = None,
          replay: str | os.PathLike | None = None, data_cropped: bool = False, replay_cropped: bool = False,
          labels: str | None = None, add_labels: bool = False, config: AdaptConfig | None = None,
          overrides: dict[str, Any] | None = None, training_pixel_size: float | None = None, convert: bool = True,
          convert_options: dict[str, Any] | None = None, progress: bool = True) -> AdaptResult:
    """Fine-tune ``checkpoint`` on a new lab's labelled cells; write ``out_dir/best.safetensors`` (and convert).

    Args:
        checkpoint: a cellsdk ``.safetensors`` checkpoint.
        data: the new lab's labelled cells: class subfolders (or train/val split folders) named after the model's
            labels; None to adapt from ``unlabelled`` cells alone.
        unlabelled: a folder of the lab's unlabelled cells (or a ``--collect`` folder): BatchNorm statistics are
            re-estimated on them and the model self-trains on its confident answers
            (:mod:`cellsdk.training.unlabelled`); they are cropped like ``data`` (``data_cropped``).
        unlabelled_config: how the unlabelled cells are used (default :class:`UnlabelledConfig`).
        out_dir: where ``best.safetensors``, ``adapt.json`` and (with ``convert``) ``converted/`` go.
        replay: the original training data, mixed in so the original lab keeps its accuracy.
        data_cropped: ``data``'s images already have the model's crop.
        replay_cropped: ``replay``'s images already have the model's crop.
        labels: class names for ``data`` if its folders do not give them.
        add_labels: grow the head for classes the model does not know.
        config: the recipe; default :meth:`AdaptConfig.for_cells` for the new lab's cells per class.
        overrides: fields to change in that preset (ignored with ``config``).
        training_pixel_size: the replay (training) images' pixel size in µm, where known: recorded, so an input
            whose pixel size is given (``predict --pixel-size``) is rescaled to it exactly.
        convert: convert as ``cellsdk-convert --quantize int8`` does (needs ``replay`` for calibration).
        convert_options: :class:`~cellsdk.converters.ConvertConfig` fields to override.
        progress: progress bars.

    Raises:
        CheckpointError, DatasetError, ConfigError, TrainingError: with what to fix.

    Examples:
        >>> adapt("best.safetensors", "labB", "runs/labB", replay="bloodmnist_128", replay_cropped=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if convert and replay is None:
        raise ConfigError("converting an adapted model needs the original training data for int8 calibration and "
                          "the guard: pass --replay DATA (recommended anyway), or --no-convert")
    if data is None and unlabelled is None:
        raise ConfigError("nothing to adapt on: give the lab's labelled cells (DATA), its unlabelled cells "
                          "(--unlabelled DIR), or both")
    if data is None and replay is None:
        raise ConfigError("adapting from unlabelled cells alone needs the original training data: pass --replay DATA")
    model, metadata = load_checkpoint(checkpoint)
    source_list = [Source.parse(data, cropped=data_cropped, labels=labels)] if data is not None else []
    if replay is not None:
        source_list.append(Source.parse(replay, cropped=replay_cropped))
    carve = config or AdaptConfig(**{k: v for k, v in (overrides or {}).items() if k in ("val_fraction", "seed")})
    sources = SourceSet(source_list, metadata.labels, grow=add_labels, val_fraction=carve.val_fraction,
                        seed=carve.seed)
    lab = 0 if data is not None else None
    replay_index = len(sources.loaded) - 1 if replay is not None else None
    per_class = 0
    if lab is not None:
        counts = np.bincount(sources.loaded[lab].train_targets, minlength=len(sources.labels))
        per_class = int(np.median(counts[sources.classes_of(lab)]))
    config = config or AdaptConfig.for_cells(per_class, pool=unlabelled is not None, **(overrides or {}))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out}: output folder is not writable ({err.strerror or err}); choose another --out") from None
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    notes = list(sources.notes)
    if sources.added:
        model = grow_head(model, len(sources.added))
        notes.append(f"added {len(sources.added)} class(es) to the model's head: {', '.join(sources.added)}")
    model = model.to(device)

    original = metadata.preprocessing
    preprocessing = original
    if config.scale and replay_index is not None and original.scale_range is None:
        preprocessing = dataclasses.replace(preprocessing, scale_range=fit_scale_range(
            sources, replay_index, original, 400, config.seed))
    if config.stain_normalise and replay_index is not None and original.stain is None:
        preprocessing = dataclasses.replace(preprocessing, stain=fit_stain(sources, replay_index, original, 200,
                                                                           config.seed))
    if training_pixel_size is not None:
        if not training_pixel_size > 0:
            raise ConfigError(f"training pixel size {training_pixel_size} must be a positive number of µm")
        preprocessing = dataclasses.replace(preprocessing, pixel_size_um=float(training_pixel_size))
    specs = [s.source.spec(preprocessing) for s in sources.loaded]
    before_specs = [s.source.spec(original) for s in sources.loaded]

    log.info("adapting %s on %s (%s)", checkpoint, data, "; ".join(notes) if notes else "")
    before = evaluate_sources(model, sources, before_specs, device, limit=config.val_limit, seed=config.seed) \
        if not sources.added else {}
    teacher = None
    if config.distill > 0 and replay is not None:
        import copy

        teacher = copy.deepcopy(model).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
    pool_run = PoolRun.start(unlabelled, unlabelled_config or UnlabelledConfig(), model, sources, specs, lab,
                              replay_index, data_cropped, preprocessing, device, config.seed) \
        if unlabelled is not None else None
    body, head = trainable(model, config.layers)
    optimizer = torch.optim.AdamW([{"params": body, "lr": config.lr},
                                   {"params": head, "lr": config.lr * config.head_lr_scale}],
                                  weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    warmup = config.steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    allowed = torch.zeros((len(sources.loaded), len(sources.labels)), device=device)
    for index in range(len(sources.loaded)):
        allowed[index, sources.classes_of(index)] = 1.0  # the loss counts only the classes a source can label
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch = -1.0, None, 0
    self_training = pool_run if pool_run is not None and pool_run.config.self_train else None
    epochs = config.epochs if lab is not None or self_training is not None else 0
    if not epochs:  # unlabelled cells without self-training: the recalibrated model as it is
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        notes.append("no labelled cells and no self-training: the model's weights are unchanged (BatchNorm "
                     "statistics re-estimated only)")
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        replays = len(sources.loaded) - 1
        shares = [1.0] if not replays else [1 - config.replay_share] + [config.replay_share / replays] * replays
        draws = draw_epoch(sources, config.steps_per_epoch * config.batch_size, shares, rng)
        loader = torch.utils.data.DataLoader(MixedDraws(sources, specs, draws, config.augment, config.seed, epoch),
                                             batch_size=config.batch_size, shuffle=False)
        views = self_training.epoch(model, config.steps_per_epoch, epoch) if self_training is not None else iter(())
        model.train()
        set_batchnorm(model, config.batchnorm)
        bar = progress_bar(len(draws), f"adapt epoch {epoch}/{config.epochs}", progress)
        loss_sum = 0.0
        try:
            for inputs, targets, source in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                if self_training is not None:
                    weak, strong, rows = next(views)
                    weak_logits = self_training.weak_logits(model, weak.to(device), config.batchnorm)
                    both = model(torch.cat([inputs, strong.to(device)])).float()
                    logits = both[:len(inputs)]
                else:
                    logits = model(inputs).float()
                loss = partial_label_loss(logits, targets, allowed[source.to(device)], config.label_smoothing)
                if self_training is not None:
                    loss = loss + self_training.loss(weak_logits, both[len(inputs):], rows)
                replayed = source.to(device) > 0
                if teacher is not None and bool(replayed.any()):
                    with torch.no_grad():
                        reference = teacher(inputs[replayed]).float()
                    width = len(metadata.labels)  # grown labels: the teacher knows the old ones only
                    loss = loss + config.distill * 4.0 * torch.nn.functional.kl_div(
                        torch.log_softmax(logits[replayed][:, :width] / 2.0, dim=1),
                        torch.log_softmax(reference[:, :width] / 2.0, dim=1), log_target=True, reduction="batchmean")
                optimizer_step(loss, model, optimizer, scheduler, clip=2.0,
                               what=f"at epoch {epoch}: lower the learning rate")
                loss_sum += float(loss.detach()) * len(targets)
                bar.update(len(targets))
        except InvalidImageError as err:
            raise TrainingError(f"bad training image: {err}") from None
        finally:
            bar.close()
        scores = evaluate_sources(model, sources, specs, device, limit=config.val_limit, seed=config.seed)
        score = selection_score(scores, float(epoch))
        record = {"epoch": epoch, "train_loss": loss_sum / len(draws), "val": scores, "score": score,
                  "seconds": time.perf_counter() - epoch_start}
        if self_training is not None:
            record["unlabelled"] = self_training.epoch_record()
        history.append(record)
        log.info("epoch %d: loss %.4f, %s (%.0f s)", epoch, record["train_loss"],
                 ", ".join(f"{k} {v.get('balanced_accuracy', float('nan')):.3f}" for k, v in scores.items()),
                 record["seconds"])
        if score >= best_score:  # ties: the later epoch (more of the schedule behind it)
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    temperature = _calibrate(model, sources, specs, device, config)
    if temperature is not None:
        notes.append(f"temperature {temperature:.3f} fitted on the sources' held-out cells and folded into the "
                     "last layer (label smoothing makes fine-tuned answers under-confident)")
    after = evaluate_sources(model, sources, specs, device, seed=config.seed)
    pseudo_folder = pool_run.finish(model, out / "unlabelled_pseudo_labelled") if pool_run else None
    records = [sources.record(i, preprocessing) for i in range(len(sources.loaded))]
    for record in records:
        name = str(record["name"])
        record["before"], record["after"] = before.get(name), after.get(name)
    training = {**metadata.training, "adaptation": {
        "from_checkpoint": str(checkpoint), "from_labels": list(metadata.labels), "config": config.to_dict(),
        "epoch": best_epoch, "sources": records, "notes": notes, "temperature": temperature,
        **({"unlabelled": pool_run.record} if pool_run else {})}}
    adapted = metadata.replace(
        labels=tuple(sources.labels), preprocessing=preprocessing, training=training,
        dataset=" + ".join(f"{r['name']} ({r['images']['train']} train, {r['images']['val']} val)" for r in records),
        reference_metrics={f"val_balanced_accuracy[{k}]": v["balanced_accuracy"] for k, v in after.items()
                           if v.get("images")},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    best = save_checkpoint(out / "best.safetensors", model.cpu(), adapted)
    seconds = time.perf_counter() - started
    deployed_before = _deployed_before(checkpoint, sources)
    write_json(out / "adapt.json", {"checkpoint": str(best), "before": before, "after": after, "history": history,
                                    "notes": notes, "seconds": seconds, "sources": records,
                                    "deployed_before": deployed_before,
                                    "unlabelled": pool_run.record if pool_run else None})
    result = AdaptResult(out, best, before, after, history, seconds, notes, deployed_before=deployed_before,
                         unlabelled=pool_run.record if pool_run else None)
    if convert:
        # the last step is the toolchain's (an explicit exception to the layers: pyproject.toml)
        from cellsdk.converters.adapted import convert_adapted
        from cellsdk.converters.labs import LabSource

        labs = [LabSource(item.source.path, item.source.cropped, item.source.labels, config.val_fraction,
                          config.seed, item.source.name) for item in sources.loaded]
        if pseudo_folder is not None:  # the guard learns the lab's cells from its pseudo-labelled pool too
            labs.insert(len(labs) - 1, LabSource(str(pseudo_folder), data_cropped, None, config.val_fraction,
                                                 config.seed, f"{Path(str(unlabelled)).name} (pseudo-labelled)"))
        result.conversion = convert_adapted(best, out / "converted", replay=labs[-1], labs=labs[:-1],
                                            options=convert_options, progress=progress)
    from cellsdk._io import write_text
    from cellsdk.training.reports import flagged_shares, format_before_after

    write_text(out / "before_after.txt", format_before_after(before, after, flagged_shares(result)) + "\n")
    return result


def _deployed_before(checkpoint: str | os.PathLike, sources: SourceSet) -> dict[str, dict[str, Any]] | None:
    """The shipped model (if ``checkpoint`` is its source) on each source's held-out cells, guard included."""
    from cellsdk import Classifier
    from cellsdk._io import sha256_file
    from cellsdk.artefacts.resolve import default_model_path
    from cellsdk.errors import CellSDKError

    try:
        shipped = Classifier.load(default_model_path(), self_check=False)
    except CellSDKError:
        return None
    if shipped.metadata.source_checkpoint_sha256 != sha256_file(checkpoint):
        return None
    out = {}
    for item in sources.loaded:
        if not len(item.val):
            continue
        predictions = shipped.predict_batch([item.val.load(i) for i in range(len(item.val))])
        labels = [sources.labels[t] for t in item.val_targets]
        right = [p is not None and p.label == truth for p, truth in zip(predictions, labels, strict=True)]
        flagged = [p is None or not p.ok for p in predictions]
        out[item.source.name] = {"model": shipped.path.name, "images": len(labels),
                                 "accuracy": float(np.mean(right)), "flagged": float(np.mean(flagged))}
    return out

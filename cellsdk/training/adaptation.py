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
from collections.abc import Sequence
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
from cellsdk.normalise import cell_size, stain_reference
from cellsdk.preprocessing import prepare_image, to_input_array
from cellsdk.training.augment import augment_image
from cellsdk.training.checkpoint import load_checkpoint, save_checkpoint
from cellsdk.training.config import AugmentConfig
from cellsdk.training.sources import Source, SourceSet, balanced_draw
from cellsdk.training.torchdata import pick_device

__all__ = ["AdaptConfig", "AdaptResult", "MixedDraws", "adapt", "draw_epoch", "evaluate_sources", "flagged_shares",
           "format_before_after", "partial_label_loss"]

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
    lr: float = 2e-4
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
    def for_cells(cls, per_class: int, **overrides: Any) -> AdaptConfig:
        """The preset for ``per_class`` labelled cells per class: few (≤ 10), some (≤ 50) or many.

        More cells: more steps (each cell is still seen a similar number of times) and a little more freedom.

        Examples:
            >>> AdaptConfig.for_cells(5).steps_per_epoch < AdaptConfig.for_cells(100).steps_per_epoch
            True
        """
        if per_class <= 10:
            base: dict[str, Any] = {}
        elif per_class <= 50:
            base = {"epochs": 12, "steps_per_epoch": 20}
        else:
            base = {"epochs": 15, "steps_per_epoch": 40, "lr": 3e-4}
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


def _grow_head(model: Any, added: int) -> Any:
    """Append ``added`` outputs to the classifier head (new rows start at the mean of the old ones)."""
    head_name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    head = model.get_submodule(head_name)
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"--add-labels needs a linear classifier head; {type(head).__name__} cannot grow")
    grown = torch.nn.Linear(head.in_features, head.out_features + added)
    with torch.no_grad():
        grown.weight[:head.out_features] = head.weight
        grown.bias[:head.out_features] = head.bias
        grown.weight[head.out_features:] = head.weight.mean(0, keepdim=True)
        grown.bias[head.out_features:] = head.bias.mean()
    parent_name, _, attr = head_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, grown)
    if hasattr(model, "num_classes"):
        model.num_classes = head.out_features + added
    return model


def _trainable(model: Any, layers: str) -> tuple[list[Any], list[Any]]:
    """(backbone parameters, head parameters) that train; the rest are frozen."""
    head_name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    named = list(model.named_parameters())
    head = [p for n, p in named if n.startswith(f"{head_name}.")]
    body_names = [n for n, _ in named if not n.startswith(f"{head_name}.")]
    if layers == "all":
        chosen = set(body_names)
    elif layers == "head":
        chosen = set()
    else:  # top: the last third of the backbone's parameter tensors (the last blocks and the final conv)
        chosen = set(body_names[int(len(body_names) * 2 / 3):])
    body = []
    for name, param in named:
        if name in chosen:
            body.append(param)
        elif not name.startswith(f"{head_name}."):
            param.requires_grad_(False)
    return body, head


def _set_batchnorm(model: Any, mode: str) -> None:
    if mode == "frozen":
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _fit_scale_range(sources: SourceSet, replay: int, spec: Preprocessing, samples: int, seed: int) -> tuple[float, float]:
    """The replay (training-lab) images' object size range in raw pixels (1st..99th percentile of a sample)."""
    item = sources.loaded[replay]
    rows = balanced_draw(item.train_targets, samples, np.random.default_rng(seed))
    crop = spec.crop_value if spec.crop_mode == "pixels" else None
    sizes = []
    for row in np.unique(rows):
        image = item.train.load(int(row))
        if item.source.cropped:  # cut by the model's crop, then resized: back to raw pixels
            raw_side = crop if crop is not None else min(image.size)
            sizes.append(cell_size(image) * raw_side / min(image.size))
        else:
            sizes.append(cell_size(image, crop=crop))
    sizes_array = np.asarray([s for s in sizes if s > 0])
    if len(sizes_array) < 20:
        raise ConfigError("too few replay images with cells to measure the training scale; pass --no-scale")
    low, high = np.percentile(sizes_array, [1, 99])
    return round(float(low), 3), round(float(high), 3)


def _fit_stain(sources: SourceSet, replay: int, spec: Preprocessing, samples: int, seed: int) -> dict[str, Any]:
    item = sources.loaded[replay]
    rows = np.unique(balanced_draw(item.train_targets, samples, np.random.default_rng(seed + 1)))
    plain = dataclasses.replace(item.source.spec(spec), stain=None)
    return stain_reference(np.asarray(prepare_image(item.train.load(int(r)), plain)) for r in rows)


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


def adapt(checkpoint: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike, *,
          replay: str | os.PathLike | None = None, data_cropped: bool = False, replay_cropped: bool = False,
          labels: str | None = None, add_labels: bool = False, config: AdaptConfig | None = None,
          overrides: dict[str, Any] | None = None, training_pixel_size: float | None = None, convert: bool = True,
          convert_options: dict[str, Any] | None = None, progress: bool = True) -> AdaptResult:
    """Fine-tune ``checkpoint`` on a new lab's labelled cells; write ``out_dir/best.safetensors`` (and convert).

    Args:
        checkpoint: a cellsdk ``.safetensors`` checkpoint.
        data: the new lab's cells: class subfolders (or train/val split folders) named after the model's labels.
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
    model, metadata = load_checkpoint(checkpoint)
    source_list = [Source.parse(data, cropped=data_cropped, labels=labels)]
    if replay is not None:
        source_list.append(Source.parse(replay, cropped=replay_cropped))
    carve = config or AdaptConfig(**{k: v for k, v in (overrides or {}).items() if k in ("val_fraction", "seed")})
    sources = SourceSet(source_list, metadata.labels, grow=add_labels, val_fraction=carve.val_fraction,
                        seed=carve.seed)
    counts = np.bincount(sources.loaded[0].train_targets, minlength=len(sources.labels))
    per_class = int(np.median(counts[sources.classes_of(0)]))
    config = config or AdaptConfig.for_cells(per_class, **(overrides or {}))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out}: output folder is not writable ({err.strerror or err}); choose another --out") from None
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    notes = list(sources.notes)
    if sources.added:
        model = _grow_head(model, len(sources.added))
        notes.append(f"added {len(sources.added)} class(es) to the model's head: {', '.join(sources.added)}")
    model = model.to(device)

    original = metadata.preprocessing
    preprocessing = original
    if config.scale and replay is not None and original.scale_range is None:
        preprocessing = dataclasses.replace(preprocessing, scale_range=_fit_scale_range(
            sources, 1, original, 400, config.seed))
    if config.stain_normalise and replay is not None and original.stain is None:
        preprocessing = dataclasses.replace(preprocessing, stain=_fit_stain(sources, 1, original, 200, config.seed))
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
    body, head = _trainable(model, config.layers)
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
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        replays = len(sources.loaded) - 1
        shares = [1.0] if not replays else [1 - config.replay_share] + [config.replay_share / replays] * replays
        draws = draw_epoch(sources, config.steps_per_epoch * config.batch_size, shares, rng)
        loader = torch.utils.data.DataLoader(MixedDraws(sources, specs, draws, config.augment, config.seed, epoch),
                                             batch_size=config.batch_size, shuffle=False)
        model.train()
        _set_batchnorm(model, config.batchnorm)
        bar = progress_bar(len(draws), f"adapt epoch {epoch}/{config.epochs}", progress)
        loss_sum = 0.0
        try:
            for inputs, targets, source in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                logits = model(inputs).float()
                loss = partial_label_loss(logits, targets, allowed[source.to(device)], config.label_smoothing)
                replayed = source.to(device) > 0
                if teacher is not None and bool(replayed.any()):
                    with torch.no_grad():
                        reference = teacher(inputs[replayed]).float()
                    width = len(metadata.labels)  # grown labels: the teacher knows the old ones only
                    loss = loss + config.distill * 4.0 * torch.nn.functional.kl_div(
                        torch.log_softmax(logits[replayed][:, :width] / 2.0, dim=1),
                        torch.log_softmax(reference[:, :width] / 2.0, dim=1), log_target=True, reduction="batchmean")
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at epoch {epoch}: lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 2.0)
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(targets)
                bar.update(len(targets))
        except InvalidImageError as err:
            raise TrainingError(f"bad training image: {err}") from None
        finally:
            bar.close()
        scores = evaluate_sources(model, sources, specs, device, limit=config.val_limit, seed=config.seed)
        measured = [m["balanced_accuracy"] for m in scores.values() if m.get("images")]
        score = float(np.mean(measured)) if measured else float(epoch)
        record = {"epoch": epoch, "train_loss": loss_sum / len(draws), "val": scores, "score": score,
                  "seconds": time.perf_counter() - epoch_start}
        history.append(record)
        log.info("epoch %d: loss %.4f, %s (%.0f s)", epoch, record["train_loss"],
                 ", ".join(f"{k} {v.get('balanced_accuracy', float('nan')):.3f}" for k, v in scores.items()),
                 record["seconds"])
        if score >= best_score:  # ties: the later epoch (more of the schedule behind it)
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    after = evaluate_sources(model, sources, specs, device, seed=config.seed)
    records = [sources.record(i, preprocessing) for i in range(len(sources.loaded))]
    for record in records:
        name = str(record["name"])
        record["before"], record["after"] = before.get(name), after.get(name)
    training = {**metadata.training, "adaptation": {
        "from_checkpoint": str(checkpoint), "from_labels": list(metadata.labels), "config": config.to_dict(),
        "epoch": best_epoch, "sources": records, "notes": notes}}
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
                                    "deployed_before": deployed_before})
    result = AdaptResult(out, best, before, after, history, seconds, notes, deployed_before=deployed_before)
    if convert:
        # the last step is the toolchain's (an explicit exception to the layers: pyproject.toml)
        from cellsdk.converters.labs import LabSource, convert_adapted

        labs = [LabSource(item.source.path, item.source.cropped, item.source.labels, config.val_fraction,
                          config.seed, item.source.name) for item in sources.loaded]
        result.conversion = convert_adapted(best, out / "converted", replay=labs[-1], labs=labs[:-1],
                                            options=convert_options, progress=progress)
    from cellsdk._io import write_text

    write_text(out / "before_after.txt", format_before_after(before, after, flagged_shares(result)) + "\n")
    return result


def flagged_shares(result: AdaptResult, artefact: str = "model.int8.onnx") -> dict[str, tuple[Any, Any]] | None:
    """Per source, the share of its held-out cells flagged before (the shipped model, when it is the checkpoint's)
    and after (``artefact`` of the conversion); None when neither is known.

    Examples:
        >>> flagged_shares(AdaptResult(Path("."), Path("x"), {}, {}, [], 0.0, []))
    """
    before = result.deployed_before or {}
    after: dict[str, Any] = {}
    if result.conversion is not None:
        entry = next((a for a in result.conversion["artefacts"] if a.get("file") == artefact), None)
        after = {name: lab.get("flagged") for name, lab in ((entry or {}).get("labs") or {}).items()}
    if not before and not after:
        return None
    names = list(result.after) or list(before)
    return {name: ((before.get(name) or {}).get("flagged"), after.get(name)) for name in names}


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


def format_before_after(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                        flagged: dict[str, tuple[float | None, float | None]] | None = None) -> str:
    """A per-lab table: cells, accuracy and balanced accuracy before and after (and flagged shares, if known).

    Examples:
        >>> print(format_before_after({"labB": {"images": 10, "accuracy": 0.1, "balanced_accuracy": 0.2}},
        ...                           {"labB": {"images": 10, "accuracy": 0.9, "balanced_accuracy": 0.85}}))
        lab   cells  accuracy before -> after  balanced before -> after
        labB     10          10.0 % -> 90.0 %          20.0 % -> 85.0 %
    """
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    rows: list[tuple[str, ...]] = [("lab", "cells", "accuracy before -> after", "balanced before -> after")]
    if flagged:
        rows[0] += ("flagged before -> after",)
    for name, metrics in after.items():
        old = before.get(name) or {}
        row: tuple[str, ...] = (name, str(metrics.get("images", 0)),
               f"{pct(old.get('accuracy'))} -> {pct(metrics.get('accuracy'))}",
               f"{pct(old.get('balanced_accuracy'))} -> {pct(metrics.get('balanced_accuracy'))}")
        if flagged:
            shares = flagged.get(name, (None, None))
            row += (f"{pct(shares[0])} -> {pct(shares[1])}",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
                     for r in rows)

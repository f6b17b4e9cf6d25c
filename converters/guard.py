"""Fitting the OOD guard at conversion time, and the gate's check that every artefact keeps it.

:func:`fit_guard` runs the fp32 PyTorch model once over a class-balanced sample
of the training split (the statistics), the validation split (the thresholds)
and synthetic shifts of validation images (:data:`cellsdk.converters.shifts.SELECTION_SHIFTS`:
stain, fading, x2 magnification, blur, JPEG, exposure). Every candidate score
(:data:`cellsdk.guard.scores.SCORES`) is fitted and measured on the shifts; the one
with the highest mean AUROC is stored (``GuardConfig.score`` can name one
instead), with its threshold for the stated retention, the confidence below
which an answer is ``uncertain``, the input checks' ranges and every figure.

The gate (:func:`check_guard`) re-measures the stored score with each artefact's
own outputs: its AUROC on the same shifted images must not fall more than
``max_auroc_drop`` (or one standard error, on few images) below fp32's. When the
fp32 threshold keeps more than ``max_retention_drop`` fewer evaluation images than
stated (int8 can shift the score distribution without changing its ranking), the
artefact gets its own threshold at the stated retention, recorded in its metadata.

Examples:
    >>> GuardConfig().retention, GuardConfig.off().enabled
    (0.95, False)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellsdk.converters.shifts import SELECTION_SHIFTS, apply_shift
from cellsdk.datasets import load_dataset, validation_carve
from cellsdk.errors import ConfigError, DatasetError
from cellsdk.guard import Guard
from cellsdk.guard.input_checks import InputChecks, measure
from cellsdk.guard.scores import SCORES, fit_score
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import auroc, softmax
from cellsdk.preprocessing import prepare_image, to_input_array

__all__ = ["GuardConfig", "GuardProbe", "auroc_standard_error", "check_guard", "check_originals",
           "deployed_threshold", "fit_guard", "originals_note", "retention_quantile"]

log = logging.getLogger("cellsdk")


@dataclass(frozen=True)
class GuardConfig:
    """How the guard is fitted and checked.

    Attributes:
        enabled: fit a guard (and export the ``features`` output) at all.
        score: ``auto`` (the best candidate on the synthetic shifts) or a score name.
        retention: the share of in-distribution (validation) images the score threshold keeps.
        target_accuracy: the confidence threshold is the lowest at which the accepted validation answers
            reach this accuracy (``uncertain`` below it); 0 disables ``uncertain``.
        train_images: training images the statistics are fitted on (class-balanced sample).
        shift_images: validation images each synthetic shift is applied to.
        dims: principal directions kept by the feature scores.
        max_auroc_drop: the gate: largest accepted fall of an artefact's mean shift AUROC below fp32's.
        originals: the training lab's images as its microscope delivers them (full resolution, not yet cropped),
            in a folder with a ``val`` split: every artefact's threshold is raised where needed to keep
            ``retention`` of them too (:func:`deployed_threshold`), not only of the calibration images.
        max_retention_drop: largest accepted fall of the evaluation images kept below ``retention`` at fp32's
            threshold (at least two binomial standard errors on that many images); beyond it the artefact's own
            threshold is set (at ``retention`` of its own scores).
    """

    enabled: bool = True
    score: str = "auto"
    retention: float = 0.95
    target_accuracy: float = 0.998
    train_images: int = 4000
    shift_images: int = 200
    dims: int = 128
    max_auroc_drop: float = 0.02
    max_retention_drop: float = 0.01
    originals: str | None = None

    def __post_init__(self) -> None:
        if self.score != "auto" and self.score not in SCORES:
            raise ConfigError(f"unknown OOD score {self.score!r}: use auto or one of {', '.join(SCORES)}")
        if not 0.5 <= self.retention < 1:
            raise ConfigError(f"guard retention must be in [0.5, 1), got {self.retention}")
        if not 0 <= self.target_accuracy <= 1:
            raise ConfigError(f"target accuracy must be in [0, 1], got {self.target_accuracy}")
        if self.train_images < 50 or self.shift_images < 10 or self.dims < 2:
            raise ConfigError("the guard needs at least 50 training images, 10 shift images and 2 dimensions")

    @classmethod
    def off(cls) -> GuardConfig:
        """No guard: artefacts export logits only (as before schema 3).

        Examples:
            >>> GuardConfig.off().enabled
            False
        """
        return cls(enabled=False)


@dataclass
class GuardProbe:
    """The synthetic-shift images the gate runs every artefact on, and fp32's figures on them."""

    arrays: dict[str, np.ndarray]
    reference_auroc: float
    retention: float


def _balanced(targets: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    per_class = max(1, count // len(classes))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:per_class] for c in classes]))


def _forward(model: Any, arrays: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from cellsdk.converters.heads import with_features

    wrapped = with_features(model)
    logits, features = [], []
    with torch.inference_mode():
        for start in range(0, len(arrays), batch):
            out_logits, out_features = wrapped(torch.from_numpy(arrays[start:start + batch]))
            logits.append(out_logits.float().numpy())
            features.append(out_features.float().numpy())
    return np.concatenate(logits).astype(np.float64), np.concatenate(features).astype(np.float64)


def _load(split: Any, indices: np.ndarray, spec: Any, shift: str | None = None) -> tuple[np.ndarray, list[dict]]:
    arrays, stats = [], []
    for i in indices:
        image = split.load(int(i))
        if shift is not None:
            image = apply_shift(shift, image)
        prepared = prepare_image(image, spec)
        arrays.append(to_input_array(prepared, spec))
        stats.append(measure(np.asarray(prepared)))
    return np.stack(arrays), stats


def _confidence_threshold(probabilities: np.ndarray, targets: np.ndarray, target_accuracy: float) -> float | None:
    """The lowest confidence at which the accepted answers reach ``target_accuracy`` (None if all already do)."""
    if target_accuracy <= 0:
        return None
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    if correct.mean() >= target_accuracy:
        return None
    order = np.argsort(-confidence, kind="stable")
    accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero(accuracy >= target_accuracy)
    if not len(good):
        return float(np.quantile(confidence, 0.1))  # unreachable target: mark the least confident tenth
    return float(confidence[order][good[-1]])


def fit_guard(model: Any, metadata: ModelMetadata, data: str, config: GuardConfig, *, data_cropped: bool = False,
              labels: str | None = None, seed: int = 0, progress: Any = None,
              labs: Sequence[Any] = ()) -> tuple[dict[str, Any], GuardProbe]:
    """Fit the guard on ``data`` (train split: statistics; val split: thresholds and shifts).

    ``progress``, if given, is called with the name of each finished step (train, val, then each shift).
    ``labs`` (:class:`cellsdk.converters.labs.LabSource`): more labs the model answers. Their train cells join
    the statistics as classes of their own (a lab's neutrophils are not the training lab's), their held-out cells
    the input-check ranges and the thresholds: the score threshold is the highest of each lab's ``retention``
    quantile, so a lab with a few cells is not outvoted by one with thousands.

    Returns:
        The metadata ``guard`` record and the probe the gate checks each artefact with.

    Raises:
        DatasetError: ``data`` lacks a train or val split.

    Examples:
        >>> data = "samples/bloodmnist_128"
        >>> record, probe = fit_guard(model, metadata, data, GuardConfig(), data_cropped=True)  # doctest: +SKIP
        >>> record["score"]["name"]  # doctest: +SKIP
        'mahalanobis'
    """
    dataset = load_dataset(data, labels=labels, seed=seed, **validation_carve(metadata))
    spec = metadata.preprocessing.without_crop() if data_cropped else metadata.preprocessing
    try:
        train, val = dataset.split("train"), dataset.split("val")
    except DatasetError as err:
        raise DatasetError(f"the OOD guard is fitted on the train and val splits: {err}; pass data with both "
                           "(--calib), or --no-guard") from None
    train_targets = dataset.targets_for(train, metadata.labels)
    val_targets = dataset.targets_for(val, metadata.labels)
    train_rows = _balanced(train_targets, config.train_images, seed)
    train_arrays, train_stats = _load(train, train_rows, spec)
    _, train_features = _forward(model, train_arrays)
    if progress is not None:
        progress("train")
    val_arrays, val_stats = _load(val, np.arange(len(val)), spec)
    val_logits, val_features = _forward(model, val_arrays)
    if progress is not None:
        progress("val")
    shift_rows = _balanced(val_targets, config.shift_images, seed + 1)
    shifted: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]] = {}
    for shift in SELECTION_SHIFTS:
        arrays, stats = _load(val, shift_rows, spec, shift)
        shifted[shift] = (arrays, *_forward(model, arrays), stats)
        if progress is not None:
            progress(shift)
    if labs:
        from cellsdk.converters.labs import lab_images

        lab_train_features, lab_train_targets, lab_val = [], [], []
        for number, lab in enumerate(labs, start=1):
            images = lab_images(lab, metadata, train_limit=config.train_images)
            lab_train_features.append(_forward(model, images.train_arrays)[1] if len(images.train_arrays) else
                                      np.zeros((0, train_features.shape[1])))
            lab_train_targets.append(images.train_targets + number * len(metadata.labels))
            train_stats = [*train_stats, *images.train_stats]
            if len(images.held_out_arrays):
                lab_val.append((lab.name or lab.path, *_forward(model, images.held_out_arrays), images.held_out_targets,
                                images.held_out_stats))
        train_features = np.concatenate([train_features[:len(train_rows)], *lab_train_features])
        score_targets = np.concatenate([train_targets[train_rows], *lab_train_targets])
        if progress is not None:
            progress("labs")
    else:
        score_targets = train_targets[train_rows]
        lab_val = []
    inliers = (val_logits[shift_rows], val_features[shift_rows])
    candidates: dict[str, dict[str, Any]] = {}
    fitted = {}
    for name in SCORES:
        score = fit_score(name, train_features, score_targets, dims=config.dims, seed=seed)
        base = score.score(*inliers)
        per_shift = {s: auroc(base, score.score(logits, features)) for s, (_, logits, features, _) in shifted.items()}
        candidates[name] = {"mean_auroc": float(np.mean(list(per_shift.values()))), "auroc": per_shift}
        fitted[name] = score
    chosen = max(candidates, key=lambda n: candidates[n]["mean_auroc"]) if config.score == "auto" else config.score
    score = fitted[chosen]
    val_scores = score.score(val_logits, val_features)
    threshold = float(np.quantile(val_scores, config.retention))
    per_lab_threshold = {str(data): threshold}
    for name, logits, features, targets, stats in lab_val:
        lab_scores = score.score(logits, features)
        per_lab_threshold[name] = float(np.quantile(lab_scores, config.retention))
        val_logits, val_features = np.concatenate([val_logits, logits]), np.concatenate([val_features, features])
        val_targets, val_stats = np.concatenate([val_targets, targets]), [*val_stats, *stats]
        val_scores = np.concatenate([val_scores, lab_scores])
    threshold = max(per_lab_threshold.values())
    kept = val_scores <= threshold
    val_probabilities = softmax(val_logits) if metadata.output == "logits" else val_logits
    confidence = _confidence_threshold(val_probabilities[kept], val_targets[kept], config.target_accuracy)
    checks = InputChecks.fit(train_stats, quantile=0.001, margin=0.2)
    checks_fired = np.asarray([bool(checks.reasons(s)) for s in val_stats])
    accepted = kept & ~checks_fired
    if confidence is not None:
        accepted &= val_probabilities.max(axis=1) >= confidence
    correct = val_probabilities.argmax(axis=1) == val_targets
    record = {
        "score": score.to_dict(),
        "threshold": threshold,
        "retention": config.retention,
        "confidence_threshold": confidence,
        "input_checks": checks.to_dict(),
        "fitted_on": {"data": str(data), "train_images": len(train_rows), "val_images": len(val),
                      "shift_images": len(shift_rows), "seed": seed, "preprocessing": spec.describe(),
                      **({"labs": [lab.to_dict() for lab in labs], "threshold_per_lab": per_lab_threshold}
                         if labs else {})},
        "validation": {
            "chosen_by": "highest mean AUROC over synthetic shifts of validation images"
                         if config.score == "auto" else "named in the conversion config",
            "shifts": list(SELECTION_SHIFTS),
            "mean_auroc": candidates[chosen]["mean_auroc"], "auroc": candidates[chosen]["auroc"],
            "val_kept_by_score": float(kept.mean()),
            "val_flagged_by_input_checks": float(checks_fired.mean()),
            "val_accepted": float(accepted.mean()),
            "val_accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan"),
            "val_accuracy_all": float(correct.mean()),
            "shifts_flagged_by_input_checks": {s: float(np.mean([bool(checks.reasons(x)) for x in stats]))
                                              for s, (_, _, _, stats) in shifted.items()},
            "candidates": candidates,
        },
    }
    probe = GuardProbe({s: arrays for s, (arrays, _, _, _) in shifted.items()} | {"_inliers": val_arrays[shift_rows]},
                       candidates[chosen]["mean_auroc"], config.retention)
    log.info("cellsdk: guard %s (mean shift AUROC %.3f; msp %.3f, energy %.3f, mahalanobis %.3f, knn %.3f)",
             chosen, candidates[chosen]["mean_auroc"], *(candidates[n]["mean_auroc"] for n in SCORES))
    return record, probe


def auroc_standard_error(area: float, inliers: int, outliers: int) -> float:
    """The standard error of an AUROC measured on ``inliers`` and ``outliers`` images (Hanley & McNeil 1982).

    Examples:
        >>> round(auroc_standard_error(0.95, 200, 200), 3)
        0.011
    """
    area = min(max(area, 1e-6), 1 - 1e-6)
    q1, q2 = area / (2 - area), 2 * area ** 2 / (1 + area)
    variance = (area * (1 - area) + (inliers - 1) * (q1 - area ** 2) + (outliers - 1) * (q2 - area ** 2)) \
        / (inliers * outliers)
    return float(np.sqrt(max(variance, 0.0)))


def check_guard(classifier: Any, eval_outputs: dict[str, np.ndarray], probe: GuardProbe,
                config: GuardConfig) -> tuple[dict[str, Any], list[str]]:
    """The gate on an artefact's guard: its own AUROC on the probe's shifts and its retention on the evaluation images.

    Returns the figures and the reasons it fails (empty when it passes).

    Examples:
        >>> check_guard(record, outputs, probe, GuardConfig())  # doctest: +SKIP
        []
    """
    guard: Guard | None = classifier.guard
    if guard is None:
        return {}, ["the artefact's guard did not load"]
    inliers = classifier.run_outputs(probe.arrays["_inliers"])
    base = guard.scores(inliers["logits"], inliers.get("features"))
    per_shift = {}
    for shift, arrays in probe.arrays.items():
        if shift == "_inliers":
            continue
        outputs = classifier.run_outputs(arrays)
        per_shift[shift] = auroc(base, guard.scores(outputs["logits"], outputs.get("features")))
    mean = float(np.mean(list(per_shift.values())))
    own = guard.scores(eval_outputs["logits"], eval_outputs.get("features"))
    kept = float((own <= guard.threshold).mean())
    shift_size = len(next(a for s, a in probe.arrays.items() if s != "_inliers"))
    # on few images an AUROC is noisy: the limit is at least one standard error (Hanley & McNeil 1982)
    tolerance = max(config.max_auroc_drop, auroc_standard_error(probe.reference_auroc, len(base), shift_size))
    record = {"mean_auroc": mean, "auroc": per_shift, "reference_mean_auroc": probe.reference_auroc,
              "auroc_change": mean - probe.reference_auroc, "auroc_tolerance": tolerance, "eval_kept": kept,
              "retention": probe.retention}
    reasons = []
    if probe.reference_auroc - mean > tolerance + 1e-9:
        reasons.append(f"OOD score AUROC fell {probe.reference_auroc - mean:.3f} below fp32's "
                       f"{probe.reference_auroc:.3f} (limit {tolerance:.3f})")
    # sampling noise of a share measured on few images: two binomial standard errors
    retention_tolerance = max(config.max_retention_drop,
                              2 * float(np.sqrt(probe.retention * (1 - probe.retention) / max(len(own), 1))))
    record["retention_tolerance"] = retention_tolerance
    if probe.retention - kept > retention_tolerance + 1e-9:
        # int8 can shift the whole score distribution while keeping its ranking (the AUROC above): this
        # artefact then gets its own threshold, at the stated retention of its own evaluation-image scores
        record["threshold"] = float(np.quantile(own, probe.retention))
        record["threshold_note"] = (f"fp32's threshold kept {kept * 100:.1f} % here (stated {probe.retention * 100:.0f} %, "
                                    f"limit -{retention_tolerance * 100:.1f} points): re-set on this artefact's "
                                    f"scores of the {len(own)} evaluation images")
    return record, reasons


#: one-sided 90 % normal quantile: a threshold set on a few hundred images keeps the stated share with 90 % confidence
_CONFIDENCE_Z = 1.2816


def retention_quantile(retention: float, images: int) -> float:
    """The quantile of ``images`` scores whose threshold keeps ``retention`` of new images with 90 % confidence.

    The plain ``retention`` quantile of a small set keeps less than stated about half the time; this adds the
    binomial standard error times the one-sided 90 % normal quantile (at most 1).

    Examples:
        >>> round(retention_quantile(0.95, 161), 3), round(retention_quantile(0.95, 100_000), 3)
        (0.972, 0.951)
    """
    return min(1.0, retention + _CONFIDENCE_Z * float(np.sqrt(retention * (1 - retention) / max(images, 1))))


#: the fewest originals a threshold is set on (150 set it within about 2 points)
MIN_ORIGINALS = 20


def check_originals(data: str, labels: str | None = None) -> int:
    """How many images the ``val`` split of ``data`` holds; a folder that cannot set a threshold is refused.

    Raises:
        DatasetError: ``data`` is not a dataset, has no ``val`` split, or fewer than :data:`MIN_ORIGINALS` in it.

    Examples:
        >>> check_originals("samples/bloodmnist_128")  # its val/ split
        32
        >>> check_originals("samples/bloodmnist_128/train")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.errors.DatasetError: --guard-originals samples/bloodmnist_128/train: 16 images in its val split; ...
    """
    try:
        split = load_dataset(data, labels=labels).split("val")
    except DatasetError as err:
        raise DatasetError(f"--guard-originals {data}: {err}; give a folder with a val/ split of the lab's "
                           "full-resolution originals (class folders inside)") from None
    if len(split) < MIN_ORIGINALS:
        raise DatasetError(f"--guard-originals {data}: {len(split)} images in its val split; the threshold needs at "
                           f"least {MIN_ORIGINALS} (more is better: 150 set it within about 2 points)")
    return len(split)


def deployed_threshold(classifier: Any, data: str, retention: float, *, base: float | None = None,
                       labels: str | None = None) -> dict[str, Any]:
    """The OOD threshold that also keeps ``retention`` of the training lab's images as its microscope delivers
    them: the ``val`` split of ``data`` (full-resolution originals) through the artefact's whole runtime path
    (decode, the model's crop, resize), scored by ``classifier``'s guard.

    A guard fitted on the training crops scores the same cells higher when they arrive as originals (another
    crop-and-resize path): the shipped model's threshold kept 90.7 % of the PBC validation originals instead of
    95 %. The threshold returned is the higher of ``base`` (default: the guard's own) and the
    :func:`retention_quantile` of the originals' scores, so it never flags more calibration images than before.

    Returns:
        A record: ``threshold`` and what it keeps of the originals before / after, with their count and source.

    Raises:
        DatasetError: ``data`` has no usable ``val`` split.

    Examples:
        >>> record = deployed_threshold(classifier, "runs/pbc_originals", 0.95)  # doctest: +SKIP
        >>> record["kept_after"] >= 0.95  # doctest: +SKIP
        True
    """
    guard = classifier.guard
    base = float(guard.threshold if base is None else base)
    check_originals(data, labels)
    split = load_dataset(data, labels=labels).split("val")
    sources = split.paths if split.paths is not None else (split.load(i) for i in range(len(split)))
    scores = [item.value.ood_score for item in classifier.predict_iter(sources, batch_size=32, errors="skip")
              if item.ok]
    if len(scores) < MIN_ORIGINALS:
        raise DatasetError(f"{data}: {len(scores)} usable images in its val split; the originals' threshold "
                           f"needs at least {MIN_ORIGINALS} (more is better: 150 set it within about 2 points)")
    values = np.asarray(scores, dtype=np.float64)
    quantile = retention_quantile(retention, len(values))
    threshold = max(base, float(np.quantile(values, quantile)))
    return {"data": str(data), "split": "val", "images": len(values), "retention": retention,
            "quantile": quantile, "threshold": threshold, "base_threshold": base,
            "kept_before": float((values <= base).mean()), "kept_after": float((values <= threshold).mean())}


def originals_note(record: dict[str, Any]) -> str:
    """The threshold note of a raise by :func:`deployed_threshold` (what ``cellsdk info`` and the metadata say).

    Examples:
        >>> originals_note({"retention": 0.95, "images": 161, "kept_before": 0.907})
        'raised to keep 95 % of 161 full-resolution originals (kept 90.7 % before)'
    """
    return (f"raised to keep {record['retention'] * 100:.0f} % of {record['images']} full-resolution originals "
            f"(kept {record['kept_before'] * 100:.1f} % before)")

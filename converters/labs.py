"""Other labs in a conversion: the guard is fitted over them too, and every artefact is checked on each one.

A model adapted to a new lab (:func:`cellsdk.training.adapt`) must keep answering the original lab and answer
the new one: :class:`LabSource` names a lab's data (how its images relate to the model's crop, and how its
held-out cells were set aside), :func:`lab_images` loads its train and held-out cells with its own
preprocessing, and :func:`check_labs` runs each verified artefact on each lab's held-out cells (accuracy,
balanced accuracy, share flagged by the guard, top-1 agreement with the fp32 checkpoint), failing an artefact
whose agreement on a lab is clearly below the gate's threshold (the upper end of its 95 % interval, on a lab with
at least :data:`MIN_LAB_CELLS` held-out cells).

Examples:
    >>> LabSource("labB/adapt", name="labB").describe()
    'labB (labB/adapt; raw images, held out: 0.3 of each class, seed 0)'
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.classifier import Classifier
from cellsdk.errors import CellSDKError, CpuVerificationWarning
from cellsdk.inference import PreparedImage
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import softmax, wilson_interval
from cellsdk.preprocessing import prepare_image, to_input_array

__all__ = ["MIN_LAB_CELLS", "LabImages", "LabSource", "check_labs", "lab_images", "with_lab_cells"]

_STATUS_PASSED, _STATUS_FAILED = "passed", "failed"
#: a lab's held-out cells fail an artefact only from this many on: below it the agreement's 95 % interval is too
#: wide to tell a 98 % artefact from a broken one (the gate on the replay data's validation split still applies)
MIN_LAB_CELLS = 50


@dataclass(frozen=True)
class LabSource:
    """One lab's data as a conversion reads it.

    Attributes:
        path: the lab's dataset (class folders, or split folders).
        cropped: its images already have the model's crop.
        labels: class names, if its folders do not give them.
        val_fraction, seed: how its held-out cells were carved when it has no val split (as adapt carved them).
        name: what the manifest calls it.
    """

    path: str
    cropped: bool = False
    labels: str | None = None
    val_fraction: float = 0.3
    seed: int = 0
    name: str = ""

    def describe(self) -> str:
        """One line for logs and the manifest.

        Examples:
            >>> LabSource("d", cropped=True, name="d").describe()
            'd (d; cropped images, held out: 0.3 of each class, seed 0)'
        """
        return (f"{self.name or self.path} ({self.path}; {'cropped' if self.cropped else 'raw'} images, held out: "
                f"{self.val_fraction:g} of each class, seed {self.seed})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready.

        Examples:
            >>> LabSource("d").to_dict()["val_fraction"]
            0.3
        """
        return {"name": self.name or self.path, "path": self.path, "cropped": self.cropped, "labels": self.labels,
                "val_fraction": self.val_fraction, "seed": self.seed}


@dataclass
class LabImages:
    """A lab's cells, preprocessed for the model: ``train`` (for the guard's statistics) and ``held_out``."""

    source: LabSource
    train_arrays: np.ndarray
    train_targets: np.ndarray
    train_stats: list[dict[str, float]]
    held_out_arrays: np.ndarray
    held_out_targets: np.ndarray
    held_out_stats: list[dict[str, float]]
    held_out_ids: tuple[str, ...]


def lab_images(lab: LabSource, metadata: ModelMetadata, *, train_limit: int | None = None) -> LabImages:
    """Load ``lab``'s train and held-out cells with the model's preprocessing (and their input statistics).

    Examples:
        >>> images = lab_images(LabSource("labB/adapt"), metadata)  # doctest: +SKIP
        >>> images.held_out_arrays.shape  # doctest: +SKIP
        (12, 3, 128, 128)
    """
    from cellsdk.guard.input_checks import measure
    from cellsdk.training.sources import Source, SourceSet

    source = Source(lab.path, lab.cropped, lab.labels, lab.name or lab.path)
    sources = SourceSet([source], metadata.labels, val_fraction=lab.val_fraction, seed=lab.seed)
    item = sources.loaded[0]
    spec = source.spec(metadata.preprocessing)

    def load(split: Any, rows: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
        arrays, stats = [], []
        for row in rows:
            prepared = prepare_image(split.load(int(row)), spec)
            arrays.append(to_input_array(prepared, spec))
            stats.append(measure(np.asarray(prepared)))
        size = metadata.preprocessing.input_size
        return (np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)), stats

    train_rows = np.arange(len(item.train))
    if train_limit is not None and len(train_rows) > train_limit:
        train_rows = np.sort(np.random.default_rng(lab.seed).choice(train_rows, train_limit, replace=False))
    train_arrays, train_stats = load(item.train, train_rows)
    held_rows = np.arange(len(item.val))
    held_arrays, held_stats = load(item.val, held_rows)
    return LabImages(lab, train_arrays, item.train_targets[train_rows], train_stats, held_arrays, item.val_targets,
                     held_stats, tuple(item.val.describe(int(r)) for r in held_rows))


def _lab_metrics(probabilities: np.ndarray, targets: np.ndarray, flagged: np.ndarray, labels: Sequence[str]) -> dict:
    predicted = probabilities.argmax(axis=1)
    right = predicted == targets
    present = sorted(set(targets.tolist()))
    recall = {labels[c]: float(right[targets == c].mean()) for c in present}
    kept = ~flagged
    return {"images": len(targets), "accuracy": float(right.mean()),
            "balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall,
            "flagged": float(flagged.mean()),
            "accuracy_kept": float(right[kept].mean()) if kept.any() else None}


def with_lab_cells(calibration: Any, labs: Sequence[LabSource], metadata: ModelMetadata, *,
                   per_lab: int = 64) -> Any:
    """The int8 calibration set plus up to ``per_lab`` training cells of each lab (seeded), so the quantization
    ranges cover the activations the new lab's stain and camera produce, not only the training lab's.

    Examples:
        >>> calibration = with_lab_cells(calibration, [LabSource("labB/adapt")], metadata)  # doctest: +SKIP
        >>> calibration.source  # doctest: +SKIP
        'bloodmnist_128 + labB/adapt'
    """
    from cellsdk.converters.calibration import ImageSet

    arrays, targets, ids, names = [calibration.arrays], [calibration.targets], list(calibration.ids), []
    for lab in labs:
        images = lab_images(lab, metadata, train_limit=per_lab)
        if not len(images.train_targets):
            continue
        arrays.append(images.train_arrays)
        targets.append(images.train_targets)
        ids.extend(f"{lab.name or lab.path}[train][{i}]" for i in range(len(images.train_targets)))
        names.append(lab.name or lab.path)
    if not names:
        return calibration
    return ImageSet(np.concatenate(arrays), np.concatenate(targets), tuple(ids),
                    " + ".join([calibration.source, *names]), calibration.split, calibration.seed)


def check_labs(model: Any, metadata: ModelMetadata, artefacts: list[dict[str, Any]], folder: Path,
               labs: Sequence[LabSource], verify: Any,
               metadata_for: Callable[[dict[str, Any]], ModelMetadata] | None = None) -> list[dict[str, Any]]:
    """Run every passed artefact on each lab's held-out cells; add ``labs`` to its manifest entry and (given
    ``metadata_for``, the metadata each artefact carries) ``training.labs_checked`` to the artefact itself.

    An artefact fails when, on some lab with at least :data:`MIN_LAB_CELLS` held-out cells, the upper end of the
    95 % interval of its top-1 agreement with the fp32 checkpoint is below the gate's threshold
    (``min_quantized_agreement`` for quantized artefacts, ``min_agreement`` otherwise).

    Returns:
        One record per lab for the manifest: the lab, its held-out cells and the fp32 checkpoint's figures.

    Examples:
        >>> labs = [LabSource("labB")]
        >>> check_labs(model, metadata, manifest["artefacts"], Path("converted"), labs, VerifyConfig())  # doctest: +SKIP
    """
    import torch

    records = []
    per_artefact: dict[str, dict[str, Any]] = {}
    for lab in labs:
        images = lab_images(lab, metadata)
        name = lab.name or lab.path
        if not len(images.held_out_targets):
            records.append({**lab.to_dict(), "images": 0, "note": "no held-out cells: not checked"})
            continue
        with torch.inference_mode():
            reference = model(torch.from_numpy(images.held_out_arrays)).float().numpy().astype(np.float64)
        reference_probabilities = softmax(reference)
        records.append({**lab.to_dict(), "images": len(images.held_out_targets),
                        "ids_sha256": hashlib.sha256("\n".join(images.held_out_ids).encode()).hexdigest(),
                        "fp32": _lab_metrics(reference_probabilities, images.held_out_targets,
                                             np.zeros(len(reference), bool), metadata.labels)})
        for entry in artefacts:
            if entry.get("status") != _STATUS_PASSED:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CpuVerificationWarning)
                    classifier = Classifier.load(folder / entry["file"], self_check=False,
                                                 **(entry.get("runtime_options") or {}))
                probabilities, flagged = _run(classifier, images)
            except CellSDKError as err:
                entry.setdefault("labs", {})[name] = {"error": str(err)}
                entry["status"], entry["reasons"] = _STATUS_FAILED, [*entry["reasons"], f"{name}: {err}"]
                continue
            metrics = _lab_metrics(probabilities, images.held_out_targets, flagged, metadata.labels)
            agreeing = int(np.count_nonzero(probabilities.argmax(1) == reference_probabilities.argmax(1)))
            low, high = wilson_interval(agreeing, len(reference))
            metrics["top1_agreement"] = agreeing / len(reference)
            metrics["agreement_interval"] = [low, high]
            entry.setdefault("labs", {})[name] = metrics
            per_artefact.setdefault(entry["file"], {})[name] = {
                k: metrics[k] for k in ("images", "accuracy", "balanced_accuracy", "flagged", "top1_agreement")}
            quantized = entry.get("precision") not in ("fp32", "fp16")
            threshold = verify.min_quantized_agreement if quantized else verify.min_agreement
            if len(reference) < MIN_LAB_CELLS:  # one disagreement in 12 cells says nothing about a 98 % rate
                metrics["note"] = (f"{len(reference)} held-out cells: recorded, too few to fail an artefact on "
                                   f"(at least {MIN_LAB_CELLS})")
            elif high < threshold - 1e-9:
                entry["status"] = _STATUS_FAILED
                entry["reasons"] = [*entry["reasons"], f"{name}: top-1 agreement with fp32 on its held-out cells "
                                    f"{100 * metrics['top1_agreement']:.1f} % (95 % interval up to {100 * high:.1f} %)"
                                    f" is below {100 * threshold:.1f} %"]
    _record_in_artefacts(artefacts, folder, per_artefact, metadata_for)
    return records


def _record_in_artefacts(artefacts: list[dict[str, Any]], folder: Path, per_artefact: dict[str, dict[str, Any]],
                         metadata_for: Callable[[dict[str, Any]], ModelMetadata] | None) -> None:
    """Write each artefact's per-lab figures into its own metadata (``training.labs_checked``), so the record
    travels with the file; the manifest entry's size and hashes follow."""
    from cellsdk.converters.base import get_converter
    from cellsdk.converters.files import describe_files

    if metadata_for is None:
        return
    for entry in artefacts:
        found = per_artefact.get(entry["file"])
        if not found:
            continue
        path = folder / entry["file"]
        metadata = metadata_for(entry)
        get_converter(entry["format"]).write_metadata(path, metadata.replace(
            training={**metadata.training, "labs_checked": found}))
        entry["size_bytes"], entry["sha256"], entry["files"] = describe_files(path)


def _run(classifier: Classifier, images: LabImages) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and guard flags of the artefact on the lab's prepared cells."""
    probabilities, flagged = [], []
    for start in range(0, len(images.held_out_arrays), 64):
        batch = images.held_out_arrays[start:start + 64]
        stats = images.held_out_stats[start:start + 64]
        prepared = [PreparedImage(array, stat) for array, stat in zip(batch, stats, strict=True)]
        result = classifier.inference.run(prepared)
        probabilities.append(np.asarray([[p.probabilities[label] for label in classifier.metadata.labels]
                                         for p in result.predictions]))
        flagged.append(np.asarray([not p.ok for p in result.predictions]))
    return np.concatenate(probabilities), np.concatenate(flagged)

"""Evaluate a deployed model (any format ``Classifier.load`` reads) on a labelled split — torch-free.

The images go through exactly the path a user's images take: file -> decode
-> the model's own preprocessing -> the runtime -> softmax. ``cellsdk-eval``
uses this for every model file that is not a training checkpoint, so the
numbers on a model card are those of the artefact as deployed.

Examples:
    >>> from cellsdk.evaluation import evaluate_model
    >>> report = evaluate_model("converted/model.int8.onnx", "data/bloodmnist_128", split="test",
    ...                         data_cropped=True)  # doctest: +SKIP
    >>> report["accuracy"], report["ece"]  # doctest: +SKIP
    (0.99, 0.01)
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import artefact_files, atomic_path, sha256_file, write_json, write_text
from cellsdk._progress import progress_bar
from cellsdk._table import text_table
from cellsdk._validate import require_int
from cellsdk.datasets import load_dataset, validation_carve
from cellsdk.errors import ConfigError, DatasetError, InvalidImageError
from cellsdk.metrics import classification_report
from cellsdk.platform.cpu import host_cpu

__all__ = ["REPORT_FILES", "confusion_matrix_csv", "evaluate_model", "evaluate_ood", "format_report", "format_sources",
           "write_report"]

REPORT, CONFUSION_CSV, CONFUSION_PNG, RELIABILITY_PNG, RISK_COVERAGE_PNG = (
    "report.json", "confusion_matrix.csv", "confusion_matrix.png", "reliability.png", "risk_coverage.png",
)
#: The files :func:`write_report` writes.
REPORT_FILES = (REPORT, CONFUSION_CSV, CONFUSION_PNG, RELIABILITY_PNG, RISK_COVERAGE_PNG)


def confusion_matrix_csv(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The confusion matrix as CSV: a header of predicted labels, one row per true label.

    Examples:
        >>> print(confusion_matrix_csv([[1, 0], [2, 3]], ["a", "b"]), end="")
        true\\predicted,a,b
        a,1,0
        b,2,3
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *labels])
    for label, row in zip(labels, matrix, strict=True):
        writer.writerow([label, *row])
    return buffer.getvalue()


def write_report(out: str | os.PathLike, report: dict[str, Any], *,
                 predictions: tuple[Any, Any] | None = None,
                 operating_point: tuple[float, float] | None = None) -> dict[str, str]:
    """Write ``report.json``, ``confusion_matrix.csv``, ``confusion_matrix.png``, ``reliability.png`` and,
    given ``predictions`` (per image: correct?, confidence), ``risk_coverage.png``.

    The PNGs need matplotlib (the ``[train]`` extra); without it they are left
    out and ``report["files"]`` lists only what was written.

    Examples:
        >>> write_report("runs/eval", report)  # doctest: +SKIP
        {'report': PosixPath('runs/eval/report.json'), ...}
    """
    out = Path(out)
    labels = report["labels"]
    files = {REPORT: out / REPORT, CONFUSION_CSV: out / CONFUSION_CSV}
    write_text(out / CONFUSION_CSV, confusion_matrix_csv(report["confusion_matrix"], labels))
    try:
        from cellsdk.plots import plot_confusion_matrix, plot_reliability

        plot_confusion_matrix(report["confusion_matrix"], labels, out / CONFUSION_PNG,
                              title=f"{report['split']}: accuracy {report['accuracy'] * 100:.2f} % (n={report['n']})")
        plot_reliability(report["reliability"], report["ece"], out / RELIABILITY_PNG)
        files.update({CONFUSION_PNG: out / CONFUSION_PNG, RELIABILITY_PNG: out / RELIABILITY_PNG})
        if predictions is not None:
            from cellsdk.plots import plot_risk_coverage

            plot_risk_coverage(predictions[0], predictions[1], out / RISK_COVERAGE_PNG, operating_point=operating_point,
                               title=f"{report['split']}: risk-coverage (n={report['n']})")
            files[RISK_COVERAGE_PNG] = out / RISK_COVERAGE_PNG
    except ImportError:
        pass
    report["files"] = {name: str(path) for name, path in files.items()}
    write_json(out / REPORT, report)
    return report["files"]


def _image_files(folder: Path) -> list[Path]:
    from cellsdk.datasets import is_image

    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))


def _run(classifier: Any, images: Sequence[Any], batch_size: int, *, desc: str, progress: bool,
         what: str) -> list[Any]:
    """Every image's Prediction, with a progress bar; an unreadable image is a DatasetError naming ``what``."""
    predictions = []
    bar = progress_bar(len(images), desc, progress)
    try:  # the pipelined engine: decoding on threads, overlapped with batched inference
        for item in classifier.predict_iter(images, batch_size=batch_size):
            predictions.append(item.value)
            bar.update(1)
    except InvalidImageError as err:
        raise DatasetError(f"bad {what} image: {err}") from None
    finally:
        bar.close()
    return predictions


def _guard_figures(predictions: list[Any], correct: np.ndarray) -> dict[str, Any]:
    statuses = np.asarray([p.status for p in predictions])
    kept = statuses == "ok"
    return {"kept": float(kept.mean()) if len(kept) else float("nan"),
            "flagged_out_of_distribution": float((statuses == "out_of_distribution").mean()) if len(kept) else 0.0,
            "uncertain": float((statuses == "uncertain").mean()) if len(kept) else 0.0,
            "accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
            "accuracy_all": float(correct.mean()) if len(correct) else float("nan")}


def _ood_folders(folders: Sequence[str | os.PathLike]) -> dict[Path, list[Path]]:
    """Each OOD folder's image files; DatasetError naming the first that is missing or empty."""
    out = {}
    for folder in map(Path, folders):
        files = _image_files(folder) if folder.is_dir() else []
        if not files:
            raise DatasetError(f"--ood {folder}: not a folder of images; pass folders of images from outside "
                               "the training domain")
        out[folder] = files
    return out


def evaluate_ood(classifier: Any, in_scores: np.ndarray, folders: Sequence[str | os.PathLike], *,
                 batch_size: int = 32, progress: bool = True) -> dict[str, dict[str, Any]]:
    """The guard on folders of images that are not the training domain: AUROC, FPR at 95 % TPR, share flagged.

    ``in_scores`` are the OOD scores of the in-distribution images the folders are compared with.

    Raises:
        DatasetError: a folder is missing or holds no images, or an image in it cannot be read.

    Examples:
        >>> evaluate_ood(clf, in_scores, ["other_lab/"])["other_lab"]["auroc"]  # doctest: +SKIP
        0.97
    """
    return _evaluate_ood_files(classifier, in_scores, _ood_folders(folders), batch_size=batch_size,
                               progress=progress)


def _evaluate_ood_files(classifier: Any, in_scores: np.ndarray, folders: Mapping[Path, list[Path]], *,
                        batch_size: int, progress: bool) -> dict[str, dict[str, Any]]:
    from cellsdk.metrics import auroc, fpr_at_tpr

    out = {}
    for folder, files in folders.items():
        predictions = _run(classifier, files, batch_size, desc=f"ood {folder.name}", progress=progress, what="OOD")
        scores = np.asarray([p.ood_score for p in predictions], dtype=np.float64)
        statuses = [p.status for p in predictions]
        record: dict[str, Any] = {"images": len(files),
                                  "flagged": sum(s == "out_of_distribution" for s in statuses) / len(files),
                                  "not_ok": sum(s != "ok" for s in statuses) / len(files)}
        if classifier.guard is not None:
            record.update(auroc=auroc(in_scores, scores), fpr_at_95_tpr=fpr_at_tpr(in_scores, scores))
            fired: dict[str, int] = {}
            for p in predictions:
                for reason in p.reasons:
                    check = reason.split(":", 1)[0] if not reason.startswith("OOD score") else "score"
                    fired[check] = fired.get(check, 0) + 1
            record["reasons"] = {k: v / len(files) for k, v in sorted(fired.items())}
        out[str(folder)] = record
    return out


def evaluate_model(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    data_cropped: bool = False,
    labels: str | Sequence[str] | None = None,
    backend: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
    strict: bool = False,
    ood: Sequence[str | os.PathLike] = (),
    explain: int = 0,
) -> dict[str, Any]:
    """Evaluate a model file or conversion folder through :class:`cellsdk.Classifier` on one split.

    Args:
        model: ``.onnx``, ``.torchscript``, ``.xml``, ``.mlpackage`` or a conversion folder
            (its verified choice is evaluated, with the options it was verified with).
        data: a dataset (``.npz`` or image folder).
        split: which split (``all`` for every image).
        out_dir: where to write the report files; None writes nothing.
        data_cropped: the images already have the model's crop (it is skipped).
        labels: the dataset's class names, if its folders do not give them.
        backend: as for :meth:`cellsdk.Classifier.load`.
        device: as for :meth:`cellsdk.Classifier.load`.
        options: backend options, as for :meth:`cellsdk.Classifier.load`.
        batch_size: images per runtime call (models with a fixed batch of 1 run one by one).
        progress: show a progress bar.
        strict: refuse an int8 artefact not verified on this machine's CPU class (see :mod:`cellsdk.platform.cpu`).
        ood: folders of images that are not the training domain (raw images, the model's own preprocessing):
            the guard's AUROC, FPR at 95 % TPR and share flagged on each, against the split's images.
        explain: write ``explanations.png`` into ``out_dir``: the ``explain`` most confident errors and as many
            random correct images with their heat-map overlays, truth and prediction (see :mod:`cellsdk.explain`).

    Returns:
        :func:`cellsdk.metrics.classification_report` plus the model, backend, data, timing, the CPU it ran on,
        whether the artefact was verified on that CPU's class, ``guard`` (share kept, accuracy of the kept
        answers; None for a model without a guard) and ``ood`` (per folder).

    Examples:
        >>> report = evaluate_model(None, "samples/bloodmnist_128", data_cropped=True, progress=False)
        >>> report["n"], report["accuracy"] > 0.9
        (32, True)
    """
    from cellsdk.classifier import Classifier

    require_int("batch_size", batch_size, minimum=1)
    started = time.perf_counter()
    ood_files = _ood_folders(ood)  # listed now: a wrong --ood fails before the whole split has run
    require_int("explain", explain, minimum=0)
    if explain and out_dir is None:
        raise ConfigError("explain needs out_dir: the montage is written there (cellsdk-eval --explain N --out DIR)")
    raw_classifier = Classifier.load(model, backend=backend, device=device, strict=strict, **dict(options or {}))
    if explain:
        from cellsdk.explain import require_cams

        require_cams(raw_classifier)  # before the whole split has run
    metadata = raw_classifier.metadata
    classifier = raw_classifier.with_preprocessing(metadata.preprocessing.without_crop()) if data_cropped \
        else raw_classifier
    dataset = load_dataset(data, labels=labels, **validation_carve(metadata))
    chosen = dataset.split(split)
    targets = dataset.targets_for(chosen, metadata.labels)
    images = list(chosen.paths) if chosen.paths is not None else list(chosen.images)  # type: ignore[arg-type]
    predictions = _run(classifier, images, batch_size, desc=f"eval {split}", progress=progress, what="evaluation")
    probabilities = np.asarray([[p.probabilities[label] for label in metadata.labels] for p in predictions],
                               dtype=np.float64).reshape(len(predictions), metadata.num_classes)
    report = classification_report(targets, probabilities, metadata.labels)
    correct = probabilities.argmax(axis=1) == targets if len(targets) else np.zeros(0, bool)
    guard = None
    if classifier.guard is not None:
        guard = {**_guard_figures(predictions, correct), "score": classifier.guard.score.name,
                 "threshold": classifier.guard.threshold, "retention": classifier.guard.retention,
                 "confidence_threshold": classifier.guard.confidence_threshold}
    in_scores = np.asarray([p.ood_score for p in predictions if p.ood_score is not None], dtype=np.float64)
    path = Path(classifier.path)
    report.update({
        "split": chosen.name,
        "data": str(data),
        "model": str(path),
        "model_sha256": sha256_file(path) if path.is_file() else None,
        "model_size_mb": sum(f.stat().st_size for f in artefact_files(path)) / 1e6,
        "backend": classifier.backend_name,
        "device": classifier.device,
        "precision": metadata.precision,
        "arch": metadata.arch,
        "preprocessing": classifier.metadata.preprocessing.describe(),
        "cpu": host_cpu().to_dict(),
        "cpu_check": classifier.cpu_check.status,
        "guard": guard,
        "ood": _evaluate_ood_files(raw_classifier, in_scores, ood_files, batch_size=batch_size, progress=progress),
        "seconds": time.perf_counter() - started,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    if out_dir is not None:
        point = (guard["kept"], guard["accuracy_kept"]) if guard and guard["kept"] > 0 else None
        write_report(out_dir, report, predictions=(correct, probabilities.max(axis=1) if len(targets) else []),
                     operating_point=point)
        if explain:
            from cellsdk.explain import evaluation_montage

            sheet, montage_images = evaluation_montage(classifier, images, np.asarray(targets), probabilities,
                                                       explain)
            target = Path(out_dir) / "explanations.png"
            with atomic_path(target) as staged:
                sheet.save(staged, format="PNG")
            report["explanations"] = {**montage_images, "file": str(target)}
            report.setdefault("files", {})[target.name] = str(target)
            write_json(Path(out_dir) / "report.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A terminal table of an evaluation report (what ``cellsdk-eval`` prints; a deployed model's first names it).

    Examples:
        >>> r = {"split": "test", "n": 2, "accuracy": 1.0, "macro_f1": 1.0, "min_recall": 1.0, "ece": 0.0,
        ...      "per_class": {"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}}}
        >>> print(format_report(r).splitlines()[0])
        test split, 2 images: accuracy 100.00 %, macro-F1 100.00 %, min recall 100.00 %, ECE 0.00 %
    """
    lines = [f"{report['model']} on {report['backend']} ({report['device']}), CPU class "
             f"{report['cpu']['cpu_class']}: {report['cpu_check']}"] if "backend" in report else []
    lines += [
        f"{report['split']} split, {report['n']} images: accuracy {report['accuracy'] * 100:.2f} %, "
        f"macro-F1 {report['macro_f1'] * 100:.2f} %, min recall {report['min_recall'] * 100:.2f} %, "
        f"ECE {report['ece'] * 100:.2f} %",
    ]
    lines += text_table(["class", "precision", "recall", "F1", "support"],
                        [[label, f"{row['precision'] * 100:.2f}%", f"{row['recall'] * 100:.2f}%",
                          f"{row['f1'] * 100:.2f}%", row["support"]] for label, row in report["per_class"].items()],
                        align="lrrrr").splitlines()
    curve = report.get("risk_coverage") or {}
    if curve.get("points"):
        lines.append("risk-coverage (accuracy of the most confident answers): " + ", ".join(
            f"{p['coverage'] * 100:.0f} % -> {p['accuracy'] * 100:.2f} %" for p in curve["points"]
            if p["coverage"] in (0.8, 0.9, 0.95, 1.0)) + f"; AURC {curve['aurc']:.4f}")
    guard = report.get("guard")
    if guard:
        lines.append(f"guard ({guard['score']}): kept {guard['kept'] * 100:.1f} % (out of distribution "
                     f"{guard['flagged_out_of_distribution'] * 100:.1f} %, uncertain {guard['uncertain'] * 100:.1f} %); "
                     f"accuracy of the kept answers {guard['accuracy_kept'] * 100:.2f} % (all: "
                     f"{guard['accuracy_all'] * 100:.2f} %)")
    elif "guard" in report:
        lines.append("guard: none in this model (every answer has status ok)")
    if report.get("ood"):
        lines += text_table(["OOD folder", "images", "AUROC", "FPR@95", "flagged"],
                            [[folder, row["images"], f"{row['auroc']:.3f}" if "auroc" in row else "-",
                              f"{row['fpr_at_95_tpr']:.2f}" if "fpr_at_95_tpr" in row else "-",
                              f"{row['flagged'] * 100:.1f}%"] for folder, row in report["ood"].items()],
                            align="lrrrr").splitlines()
    return "\n".join(lines)


def format_sources(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per source (lab): images, accuracy, balanced accuracy (mean recall over its classes), the weakest
    class and, for deployed models with a guard, the share kept.

    Examples:
        >>> row = {"n": 4, "accuracy": 0.75, "per_class": {"a": {"recall": 1.0, "support": 2},
        ...                                                 "b": {"recall": 0.5, "support": 2}}}
        >>> print(format_sources({"labB": row}))
        source  images  accuracy  balanced  weakest class  kept
        labB         4    75.0 %    75.0 %  b 50.0 %        n/a
    """
    rows = []
    for name, report in reports.items():
        present = {k: v for k, v in report["per_class"].items() if v.get("support", 0) > 0}
        balanced = sum(v["recall"] for v in present.values()) / max(1, len(present))
        weakest = min(present.items(), key=lambda item: item[1]["recall"]) if present else ("-", {"recall": 0.0})
        guard = report.get("guard")
        kept = f"{guard['kept'] * 100:.1f} %" if guard else "n/a"
        rows.append([name, report["n"], f"{report['accuracy'] * 100:.1f} %", f"{balanced * 100:.1f} %",
                     f"{weakest[0]} {weakest[1]['recall'] * 100:.1f} %", kept])
    return text_table(["source", "images", "accuracy", "balanced", "weakest class", "kept"], rows, align="lrrrlr")

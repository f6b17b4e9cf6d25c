"""Evaluate a deployed model (any format ``Classifier.load`` reads) on a labelled split — torch-free.

The images go through exactly the path a user's images take: file -> decode
-> the model's own preprocessing -> the runtime -> softmax. ``cellsdk-eval``
uses this for every model file that is not a training checkpoint, so the
numbers on a model card are those of the artefact as deployed.

Example:
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellsdk._io import artefact_files, sha256_file, write_json, write_text
from cellsdk._progress import progress_bar
from cellsdk.cpu import host_cpu
from cellsdk.datasets import load_dataset
from cellsdk.errors import DatasetError, InvalidImageError
from cellsdk.metrics import classification_report

__all__ = ["REPORT_FILES", "confusion_matrix_csv", "evaluate_model", "write_report"]

REPORT, CONFUSION_CSV, CONFUSION_PNG, RELIABILITY_PNG = (
    "report.json", "confusion_matrix.csv", "confusion_matrix.png", "reliability.png",
)
#: The files :func:`write_report` writes.
REPORT_FILES = (REPORT, CONFUSION_CSV, CONFUSION_PNG, RELIABILITY_PNG)


def confusion_matrix_csv(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The confusion matrix as CSV: a header of predicted labels, one row per true label.

    Example:
        >>> print(confusion_matrix_csv([[1, 0], [2, 3]], ["a", "b"]), end="")
        true\\predicted,a,b
        a,1,0
        b,2,3
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *labels])
    for label, row in zip(labels, matrix):
        writer.writerow([label, *row])
    return buffer.getvalue()


def write_report(out: str | os.PathLike, report: dict[str, Any]) -> dict[str, str]:
    """Write ``report.json``, ``confusion_matrix.csv``, ``confusion_matrix.png`` and ``reliability.png``.

    The PNGs need matplotlib (the ``[train]`` extra); without it they are left
    out and ``report["files"]`` lists only what was written.
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
    except ImportError:
        pass
    report["files"] = {name: str(path) for name, path in files.items()}
    write_json(out / REPORT, report)
    return report["files"]


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
        backend, device, options: as for :meth:`cellsdk.Classifier.load`.
        batch_size: images per runtime call (models with a fixed batch of 1 run one by one).
        progress: show a progress bar.
        strict: refuse an int8 artefact not verified on this machine's CPU class (see :mod:`cellsdk.cpu`).

    Returns:
        :func:`cellsdk.metrics.classification_report` plus the model, backend, data, timing, the CPU it ran on
        and whether the artefact was verified on that CPU's class.
    """
    from cellsdk.classifier import Classifier

    started = time.perf_counter()
    classifier = Classifier.load(model, backend=backend, device=device, strict=strict, **dict(options or {}))
    metadata = classifier.metadata
    if data_cropped:
        classifier = classifier.with_preprocessing(metadata.preprocessing.without_crop())
    dataset = load_dataset(data, labels=labels)
    chosen = dataset.split(split)
    targets = dataset.targets_for(chosen, metadata.labels)
    bar = progress_bar(len(chosen), f"eval {split}", progress)
    chunks = []
    try:
        for start in range(0, len(chosen), batch_size):
            indices = range(start, min(start + batch_size, len(chosen)))
            images = [chosen.paths[i] if chosen.paths is not None else chosen.images[i] for i in indices]
            chunks.append(classifier.predict_proba(images, batch_size=batch_size))
            bar.update(len(images))
    except InvalidImageError as err:
        raise DatasetError(f"bad evaluation image: {err}") from None
    finally:
        bar.close()
    probabilities = np.concatenate(chunks) if chunks else np.zeros((0, metadata.num_classes))
    report = classification_report(targets, probabilities, metadata.labels)
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
        "seconds": time.perf_counter() - started,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    if out_dir is not None:
        write_report(out_dir, report)
    return report


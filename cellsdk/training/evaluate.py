"""``cellsdk-eval``: accuracy, macro-F1, per-class scores, confusion matrix and calibration of a checkpoint.

Examples:
    >>> from cellsdk.training import evaluate
    >>> report = evaluate("runs/a/best.safetensors", "data.npz", split="test", out_dir="runs/a/eval")  # doctest: +SKIP
    >>> report["accuracy"]  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from cellsdk._io import sha256_file
from cellsdk._progress import progress_bar
from cellsdk._validate import require_int
from cellsdk.datasets import Split, load_dataset, validation_carve
from cellsdk.errors import DatasetError, InvalidImageError
from cellsdk.evaluation import confusion_matrix_csv, write_report
from cellsdk.metadata import Preprocessing
from cellsdk.metrics import classification_report
from cellsdk.training.checkpoint import load_checkpoint

__all__ = ["confusion_matrix_csv", "evaluate", "fp32_probabilities"]


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    data_cropped: bool = False,
    labels: str | Sequence[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on one split and (optionally) write the report files.

    Args:
        checkpoint: a ``.safetensors`` checkpoint written by ``cellsdk-train``.
        data: a dataset (``.npz`` or image folder).
        split: which split to evaluate.
        out_dir: where to write ``report.json``, ``confusion_matrix.csv``,
            ``confusion_matrix.png`` and ``reliability.png``; None writes nothing.
        data_cropped: the images were already cut with the model's crop.
        labels: the dataset's class names, if its folders do not give them.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        workers: data-loading worker processes.
        progress: show a progress bar.

    Returns:
        The report: :func:`cellsdk.metrics.classification_report` plus the
        model, data and timing it was computed from.

    Examples:
        >>> report = evaluate("runs/a/best.safetensors", "samples/bloodmnist_128", data_cropped=True)  # doctest: +SKIP
        >>> report["accuracy"]  # doctest: +SKIP
        0.96875
    """
    require_int("batch_size", batch_size, minimum=1)
    require_int("workers", workers, minimum=0)
    started = time.perf_counter()
    model, metadata = load_checkpoint(checkpoint)
    dataset = load_dataset(data, labels=labels, **validation_carve(metadata))
    chosen = dataset.split(split)
    targets = dataset.targets_for(chosen, metadata.labels)
    spec = metadata.preprocessing.without_crop() if data_cropped else metadata.preprocessing
    probabilities, loss = fp32_probabilities(model, chosen, spec, batch_size=batch_size, device=device,
                                             workers=workers, progress=progress, task="eval", task_noun="evaluation")
    report = classification_report(targets, probabilities, metadata.labels)
    report.update({
        "loss": loss,
        "split": chosen.name,
        "data": str(data),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "arch": metadata.arch,
        "preprocessing": spec.describe(),
        "seconds": time.perf_counter() - started,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    if out_dir is not None:
        write_report(out_dir, report, predictions=(probabilities.argmax(axis=1) == targets, probabilities.max(axis=1)))
    return report



def fp32_probabilities(model: Any, split: Split, spec: Preprocessing, *, batch_size: int, device: str, workers: int,
                       progress: bool, task: str, task_noun: str) -> tuple[Any, float]:
    """Run ``model`` in full fp32 over ``split`` with ``spec``: probabilities ``N x C`` and the mean loss.

    ``task`` labels the progress bar (``"<task> <split>"``); ``task_noun`` names a bad image's role in the error.

    Examples:
        >>> probabilities, loss = fp32_probabilities(model, split, metadata.preprocessing)  # doctest: +SKIP
        >>> probabilities.shape  # doctest: +SKIP
        (32, 8)
    """
    import torch

    from cellsdk.training.torchdata import SplitDataset, make_loader, pick_device, predict_split

    torch_device = pick_device(device)
    # full fp32 (these are reference metrics); channels-last is the same arithmetic, about 2x faster on CPU
    model = model.to(torch_device, memory_format=torch.channels_last)
    loader = make_loader(SplitDataset(split, spec), batch_size, shuffle=False, workers=workers)
    bar = progress_bar(len(split), f"{task} {split.name}", progress)
    try:
        probabilities, _, loss = predict_split(model, loader, torch_device, None, channels_last=True, progress=bar)
    except InvalidImageError as err:
        raise DatasetError(f"bad {task_noun} image: {err}") from None
    finally:
        bar.close()
    return probabilities, loss

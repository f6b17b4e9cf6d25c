"""Distillation: one small student learns from the averaged soft targets of one or several teachers.

Shipping an ensemble means N models on the device; distilling moves (part of) its accuracy into one. Each
teacher is a cellsdk checkpoint (another architecture, or the same one at a higher resolution): it runs its **own**
preprocessing (input size, crop, normalisation) on every training image once, before the student's first epoch,
and the students' loss is

    (1 - weight) x cross-entropy(student, hard label) + weight x T² x KL(teachers' p_T || student's p_T)

with p_T the softmax at temperature T, the teachers' probabilities averaged (Hinton et al., 2015). The soft targets
are computed on the un-augmented images ("offline" distillation): the student's augmentations (flips, right-angle
turns, mild colour) do not change a cell's class, and each teacher runs once instead of once per epoch — on two
CPU cores the difference between minutes and hours.

Examples:
    >>> soft = teacher_targets(["runs/b0_224/best.safetensors"], split, data_cropped=True)  # doctest: +SKIP
    >>> soft.shape  # doctest: +SKIP
    torch.Size([11959, 8])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from cellsdk.errors import ConfigError

__all__ = ["distillation_loss", "teacher_targets"]


def teacher_targets(teachers: Sequence[str | os.PathLike], split: Any, labels: Sequence[str], *,
                    data_cropped: bool, temperature: float = 2.0, batch_size: int = 64, device: Any = "cpu",
                    progress: bool = False) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The averaged soft targets (``N x C``, at ``temperature``) of ``teachers`` on ``split``, in its order, and a
    record of each teacher.

    Raises:
        ConfigError: a teacher with other classes (or in another order) than the student's ``labels``.

    Examples:
        >>> soft, record = teacher_targets(["t.safetensors"], split, ["a", "b"], data_cropped=True)  # doctest: +SKIP
    """
    from cellsdk._io import sha256_file
    from cellsdk._progress import progress_bar
    from cellsdk.training.checkpoint import load_checkpoint
    from cellsdk.training.torchdata import SplitDataset, make_loader

    total: torch.Tensor | None = None
    records = []
    for path in teachers:
        model, metadata = load_checkpoint(path, device=str(device))
        if tuple(metadata.labels) != tuple(labels):
            raise ConfigError(f"teacher {path} has classes {list(metadata.labels)}, the student "
                              f"{list(labels)}: a teacher must be trained on the same classes in the same order")
        spec = metadata.preprocessing.without_crop() if data_cropped else metadata.preprocessing
        loader = make_loader(SplitDataset(split, spec), batch_size, shuffle=False)
        bar = progress_bar(len(split), f"teacher {os.path.basename(str(path))} ({metadata.arch}, "
                                       f"{spec.input_size} px)", progress)
        probabilities = []
        with torch.no_grad():
            for inputs, _ in loader:
                logits = model(inputs.to(device)).float()
                probabilities.append(torch.softmax(logits / temperature, dim=1).cpu())
                bar.update(len(inputs))
        bar.close()
        soft = torch.cat(probabilities)
        total = soft if total is None else total + soft
        records.append({"path": str(path), "sha256": sha256_file(path), "arch": metadata.arch,
                        "input_size": metadata.preprocessing.input_size,
                        "val_accuracy": metadata.reference_metrics.get("val_accuracy")})
    if total is None:
        raise ConfigError("distillation needs at least one --teacher checkpoint")
    return total / len(teachers), records


def distillation_loss(logits: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor, criterion: Any, *,
                      weight: float, temperature: float) -> torch.Tensor:
    """``(1 - weight) x criterion(logits, hard) + weight x T² x KL(soft || softmax(logits / T))``.

    Examples:
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> loss = distillation_loss(logits, torch.tensor([0]), torch.tensor([[0.5, 0.5]]),
        ...                          torch.nn.CrossEntropyLoss(), weight=1.0, temperature=1.0)
        >>> round(float(loss), 4)  # KL from (0.5, 0.5) to softmax(2, 0)
        0.4338
    """
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
    return (1.0 - weight) * criterion(logits, hard) + weight * temperature * temperature * kl

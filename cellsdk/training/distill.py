"""Distillation: one small student learns from the averaged soft targets of one or several teachers.

Shipping an ensemble means N models on the device; distilling moves (part of) its accuracy into one. Each
teacher is a cellsdk checkpoint (another architecture, or the same one at a higher resolution): it runs its **own**
preprocessing (input size, crop, normalisation) on every training image once, before the student's first epoch,
and the students' loss is

    (1 - weight) x cross-entropy(student, hard label) + weight x T² x KL(teachers' p_T || student's p_T)

with p_T the softmax at temperature T, the teachers' probabilities averaged (Hinton et al., 2015). The soft targets
are computed on the un-augmented images ("offline" distillation): the student's augmentations (flips, right-angle
turns, mild colour) do not change a cell's class, and each teacher runs once instead of once per epoch — on two
CPU cores the difference between minutes and hours. Each teacher's probabilities are cached
(``$CELLSDK_CACHE/soft_targets``, default ``~/.cache/cellsdk``; see :func:`soft_target_key`), so the next student
taught by the same teacher on the same images starts at once (on two cores: 4 min saved per teacher at 128 px).

Examples:
    >>> soft = teacher_targets(["runs/b0_224/best.safetensors"], split, data_cropped=True)  # doctest: +SKIP
    >>> soft.shape  # doctest: +SKIP
    torch.Size([11959, 8])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cellsdk.errors import ConfigError

__all__ = ["distillation_loss", "soft_target_key", "teacher_targets"]

log = logging.getLogger(__name__)

#: bump when what is cached changes meaning
_CACHE_VERSION = 1


def soft_target_key(teacher_sha256: str, split: Any, spec: Any, temperature: float) -> str:
    """The cache key of one teacher's soft targets: the teacher file's sha256, its preprocessing, the temperature
    and the split's images — each file's path, size and modification time (an array split: its bytes) — and
    labels, in order. Any change (a retrained teacher, an image replaced or added) makes a new key.

    Examples:
        >>> import numpy as np
        >>> from cellsdk.datasets import Split
        >>> split = Split("train", np.array([0, 1]), images=np.zeros((2, 4, 4), np.uint8))
        >>> a = soft_target_key("ab" * 32, split, "resize 32", 2.0)
        >>> a == soft_target_key("ab" * 32, split, "resize 32", 2.0), a == soft_target_key("ab" * 32, split, "resize 32", 1.0)
        (True, False)
    """
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, teacher_sha256, repr(spec), float(temperature),
                                        split.targets.tolist()]).encode())
    if split.paths is not None:
        for path in split.paths:
            stat = os.stat(path)
            digest.update(f"{os.fspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    elif split.images is not None:
        digest.update(repr(split.images.shape).encode())
        digest.update(split.images.tobytes())
    return digest.hexdigest()


def _cache_file(key: str) -> Path:
    from cellsdk._io import user_cache_dir

    return user_cache_dir() / "soft_targets" / f"{key}.safetensors"


def _cached(key: str, rows: int, classes: int) -> torch.Tensor | None:
    path = _cache_file(key)
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        soft = load_file(str(path))["probabilities"]
    except Exception as err:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
        log.warning("soft-target cache %s unreadable (%s); running the teacher again", path, err)
        return None
    return soft if tuple(soft.shape) == (rows, classes) else None


def _store(key: str, soft: torch.Tensor) -> None:
    path = _cache_file(key)
    try:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        save_file({"probabilities": soft.contiguous()}, str(staged))
        os.replace(staged, path)
    except OSError as err:  # a read-only or full cache costs time, not the run
        log.warning("soft targets not cached (%s): the next student runs this teacher again", err)


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
    from cellsdk.artefacts.checkpoints import read_checkpoint_metadata
    from cellsdk.training.checkpoint import load_checkpoint
    from cellsdk.training.torchdata import SplitDataset, make_loader

    total: torch.Tensor | None = None
    records = []
    for path in teachers:
        metadata = read_checkpoint_metadata(path)  # the header: the weights load only if the cache has no targets
        if tuple(metadata.labels) != tuple(labels):
            raise ConfigError(f"teacher {path} has classes {list(metadata.labels)}, the student "
                              f"{list(labels)}: a teacher must be trained on the same classes in the same order")
        spec = metadata.preprocessing.without_crop() if data_cropped else metadata.preprocessing
        sha = sha256_file(path)
        key = soft_target_key(sha, split, spec, temperature)
        soft = _cached(key, len(split), len(labels))
        if soft is None:
            model, _ = load_checkpoint(path, device=str(device))
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
            _store(key, soft)
        elif progress:
            log.info("teacher %s: soft targets from the cache (%s)", path, _cache_file(key))
        total = soft if total is None else total + soft
        records.append({"path": str(path), "sha256": sha, "arch": metadata.arch,
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

"""The torch side of data: a Dataset over a split, loaders, devices, mixed precision, prediction.

Every tensor is made by :mod:`cellsdk.preprocessing`, so training and
evaluation see exactly what the runtime sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cellsdk.backends.torchscript import resolve_torch_device
from cellsdk.datasets import Split
from cellsdk.errors import ConfigError
from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import prepare_image, to_input_array
from cellsdk.training.augment import augment_image
from cellsdk.training.config import AugmentConfig

__all__ = ["IndexedDataset", "SplitDataset", "autocast", "make_loader", "pick_amp", "pick_device", "predict_split"]


class SplitDataset(Dataset):
    """A torch Dataset over one :class:`~cellsdk.datasets.Split`.

    Augmentation draws come from ``numpy.random.default_rng([seed, epoch, index])``,
    so a run is reproducible, and resuming at epoch ``e`` draws what an
    uninterrupted run would have drawn.
    """

    def __init__(self, split: Split, spec: Preprocessing, augment: AugmentConfig | None = None, seed: int = 0):
        self.split = split
        self.spec = spec
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = prepare_image(self.split.load(index), self.spec)
        if self.augment is not None:
            image = augment_image(image, self.augment, np.random.default_rng([self.seed, self.epoch, index]))
        return torch.from_numpy(to_input_array(image, self.spec)), int(self.split.targets[index])


class IndexedDataset(Dataset):
    """A :class:`SplitDataset` whose items also carry their index (to look up per-image soft targets)."""

    def __init__(self, dataset: SplitDataset) -> None:
        self.dataset = dataset

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.dataset.epoch = value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, target = self.dataset[index]
        return image, target, index


def make_loader(dataset: SplitDataset | IndexedDataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling order depends only on ``(seed, epoch)``.

    ``pin_memory`` (for a CUDA device) puts batches in page-locked memory, so the copy to the GPU overlaps compute.

    Examples:
        >>> loader = make_loader(dataset, batch_size=16, shuffle=True, seed=0, epoch=1)  # doctest: +SKIP
        >>> len(loader)  # doctest: +SKIP
        4
    """
    dataset.epoch = epoch
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        num_workers=workers,
        drop_last=shuffle and len(dataset) > batch_size,  # no lone last batch: BatchNorm needs more than one
        persistent_workers=False,
        pin_memory=pin_memory,
    )


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist.

    Examples:
        >>> pick_device("cpu").type
        'cpu'
    """
    return torch.device(resolve_torch_device(name))


def _cpu_has_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def pick_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device``, or None for full precision.

    ``auto`` means bf16 on CPUs with native bf16, fp16 on CUDA, off elsewhere.

    Examples:
        >>> import torch
        >>> pick_amp("off", torch.device("cpu")) is None
        True
    """
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and _cpu_has_bf16():
            return torch.bfloat16
        return None
    if mode == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 mixed precision needs a GPU: use --amp bf16 or off on CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast for ``dtype``, or a no-op context when it is None.

    Examples:
        >>> with autocast(torch.device("cpu"), None):
        ...     torch.ones(1).dtype
        torch.float32
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batches(loader: DataLoader, device: torch.device, channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        yield inputs, targets.to(device, non_blocking=True)


@torch.no_grad()
def predict_split(model: Any, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None, *,
                  channels_last: bool = False, progress: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Run ``model`` (in eval mode) over a loader.

    Returns:
        Probabilities ``N x C`` (float64), targets ``N``, and the mean cross-entropy.

    Examples:
        >>> logits, targets, loss = predict_split(model, loader, device)  # doctest: +SKIP
    """
    model.eval()
    probabilities, targets, loss_sum = [], [], 0.0
    for inputs, target in _batches(loader, device, channels_last):
        with autocast(device, amp):
            logits = model(inputs)
        logits = logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        probabilities.append(torch.softmax(logits, dim=1).double().cpu().numpy())
        targets.append(target.cpu().numpy())
        if progress is not None:
            progress.update(len(target))
    count = sum(len(t) for t in targets)
    if count == 0:
        return np.zeros((0, 0)), np.zeros((0,), dtype=np.int64), 0.0
    return np.concatenate(probabilities), np.concatenate(targets), loss_sum / count

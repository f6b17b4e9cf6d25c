"""``cellsdk calibrate``: temperature scaling folded into a checkpoint's classifier.

A network trained with label smoothing (cellsdk's default) is under-confident:
at 99 % accuracy its top probability averages about 0.9. Temperature scaling
(Guo et al. 2017) fits one number ``T`` on held-out data so that
``softmax(logits / T)`` minimises the negative log-likelihood. It never
changes which class wins, so accuracy, recall and the confusion matrix stay
exactly as they were; only the probabilities become honest.

cellsdk folds ``1 / T`` into the final linear layer (``W / T``, ``b / T``), so
the calibrated checkpoint is an ordinary checkpoint: every format converted
from it, on every runtime, gives the calibrated probabilities with no extra
step at inference. The metadata records ``T``, the split it was fitted on and
the calibration error before and after, under ``training.temperature_scaling``.

Examples:
    >>> from cellsdk.training.calibrate import calibrate_checkpoint
    >>> r = calibrate_checkpoint("runs/a/best.safetensors", "data/bloodmnist_128",
    ...                          out="runs/a/calibrated.safetensors", data_cropped=True)  # doctest: +SKIP
    >>> r["temperature"], r["after"]["ece"]  # doctest: +SKIP
    (0.62, 0.004)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import sha256_file
from cellsdk._validate import require_int
from cellsdk.datasets import load_dataset, validation_carve
from cellsdk.errors import CheckpointError, ConfigError, DatasetError
from cellsdk.metrics import expected_calibration_error, fit_temperature, nll
from cellsdk.training.checkpoint import load_checkpoint, save_checkpoint
from cellsdk.training.evaluate import fp32_probabilities

__all__ = ["calibrate_checkpoint", "fold_temperature"]

#: The smallest number of held-out images a temperature is fitted on.
MIN_IMAGES = 20


def fold_temperature(model: Any, temperature: float) -> None:
    """Divide the model's final layer (weights and bias) by ``temperature``, in place.

    Raises:
        CheckpointError: the model's classifier is not a linear or 1x1 convolution layer.

    Examples:
        >>> import timm, torch
        >>> model = timm.create_model("test_efficientnet", num_classes=3, pretrained=False)
        >>> before = model.get_classifier().weight.detach().clone()
        >>> fold_temperature(model, 2.0)
        >>> bool(torch.allclose(model.get_classifier().weight, before / 2))
        True
    """
    import torch

    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, (torch.nn.Linear, torch.nn.Conv2d)):
        raise CheckpointError(
            f"cannot fold a temperature into a {type(head).__name__} classifier; "
            "calibrate models whose last layer is Linear or a 1x1 Conv2d"
        )
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    split: str = "val",
    data_cropped: bool = False,
    labels: str | Sequence[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit a temperature on ``split`` of ``data`` and write the calibrated checkpoint to ``out``.

    Args:
        checkpoint: a ``cellsdk-train`` checkpoint.
        data: a dataset (``.npz`` or image folder) with a held-out split.
        out: the calibrated checkpoint to write [default: ``<checkpoint stem>.calibrated.safetensors``].
            It may not be ``checkpoint`` itself: the original stays as it was.
        split: the held-out split to fit on (never the test split you report).
        data_cropped: the images already have the model's crop.
        labels: the dataset's class names, if its folders do not give them.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        workers: data-loading processes.
        progress: show a progress bar.

    Returns:
        ``temperature``, ``before`` / ``after`` (``nll``, ``ece``, ``mean_confidence``, ``accuracy``),
        ``n``, ``split``, ``out``, ``seconds``.

    Examples:
        >>> result = calibrate_checkpoint("runs/a/best.safetensors", "data/bloodmnist_128", data_cropped=True)  # doctest: +SKIP
        >>> round(result["temperature"], 2), result["after"]["ece"] < result["before"]["ece"]  # doctest: +SKIP
        (0.62, True)
    """
    import torch

    require_int("batch_size", batch_size, minimum=1)
    require_int("workers", workers, minimum=0)
    started = time.perf_counter()
    source = Path(checkpoint)
    target = Path(out) if out is not None else source.with_name(f"{source.stem}.calibrated.safetensors")
    if target.resolve() == source.resolve():
        raise ConfigError(f"--out {target} is the checkpoint itself; write the calibrated one beside it")
    if split == "test":
        raise ConfigError("fitting the temperature on the test split would bias every test figure; use val")
    model, metadata = load_checkpoint(source)
    if "temperature_scaling" in metadata.training:
        fitted = metadata.training["temperature_scaling"]["temperature"]
        raise CheckpointError(f"{source}: already calibrated (T={fitted:.4f}); calibrate the uncalibrated checkpoint "
                              "instead")
    dataset = load_dataset(data, labels=labels, **validation_carve(metadata))
    chosen = dataset.split(split)
    if len(chosen) < MIN_IMAGES:
        raise DatasetError(f"{data}: split {split!r} has {len(chosen)} images; fitting a temperature needs at "
                           f"least {MIN_IMAGES} held-out images")
    targets = dataset.targets_for(chosen, metadata.labels)
    spec = metadata.preprocessing.without_crop() if data_cropped else metadata.preprocessing
    probabilities, _ = fp32_probabilities(model, chosen, spec, batch_size=batch_size, device=device, workers=workers,
                                          progress=progress, task="calibrate on", task_noun="calibration")
    log_probs = np.log(np.clip(probabilities, 1e-300, None))
    temperature = fit_temperature(log_probs, targets)
    scaled = np.exp(log_probs / temperature)
    scaled /= scaled.sum(axis=1, keepdims=True)
    before, after = _summary(probabilities, log_probs, targets, 1.0), _summary(scaled, log_probs, targets, temperature)

    model = model.to("cpu", memory_format=torch.contiguous_format)
    fold_temperature(model, temperature)
    record = {"temperature": temperature, "split": chosen.name, "n": len(chosen), "data": str(data),
              "source_checkpoint_sha256": sha256_file(source), "before": before, "after": after}
    new_metadata = metadata.replace(
        training={**metadata.training, "temperature_scaling": record},
        reference_metrics={**metadata.reference_metrics, f"{chosen.name}_ece": after["ece"],
                           f"{chosen.name}_nll": after["nll"]},
    )
    save_checkpoint(target, model, new_metadata)
    return {**record, "out": str(target), "seconds": time.perf_counter() - started}


def _summary(probabilities: np.ndarray, log_probs: np.ndarray, targets: np.ndarray,
             temperature: float) -> dict[str, float]:
    ece, _ = expected_calibration_error(probabilities, targets)
    return {"nll": nll(log_probs, targets, temperature), "ece": ece,
            "mean_confidence": float(probabilities.max(axis=1).mean()),
            "accuracy": float((probabilities.argmax(axis=1) == targets).mean())}

"""Fine-tuning helpers for adaptation: grow a classifier head, choose the layers that train, keep BatchNorm's
statistics, and fit the scale range and stain reference of the training lab from its images.

Examples:
    >>> from cellsdk.training.models import create_model
    >>> model, _ = create_model("test_efficientnet", num_classes=3, pretrained="none")
    >>> grow_head(model, 2).get_classifier().out_features
    5
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from cellsdk.errors import ConfigError
from cellsdk.metadata import Preprocessing
from cellsdk.normalise import cell_size, stain_reference
from cellsdk.preprocessing import prepare_image
from cellsdk.training.sources import SourceSet, balanced_draw

__all__ = ["fit_scale_range", "fit_stain", "grow_head", "set_batchnorm", "trainable"]


def grow_head(model: Any, added: int) -> Any:
    """Append ``added`` outputs to the classifier head (new rows start at the mean of the old ones).

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> grow_head(create_model("test_efficientnet", 2, "none")[0], 1).get_classifier().out_features
        3
    """
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


def trainable(model: Any, layers: str) -> tuple[list[Any], list[Any]]:
    """(backbone parameters, head parameters) that train (``all``, ``top`` or ``head``); the rest are frozen.

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> body, head = trainable(create_model("test_efficientnet", 2, "none")[0], "head")
        >>> len(body), len(head)
        (0, 2)
    """
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


def set_batchnorm(model: Any, mode: str) -> None:
    """``frozen``: every BatchNorm layer in eval mode (the original statistics); ``train``: left as they are.

    Examples:
        >>> layer = torch.nn.Sequential(torch.nn.BatchNorm2d(3)).train()
        >>> set_batchnorm(layer, "frozen"); layer[0].training
        False
    """
    if mode == "frozen":
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def fit_scale_range(sources: SourceSet, replay: int, spec: Preprocessing, samples: int, seed: int) -> tuple[float, float]:
    """The replay (training-lab) images' object size range in raw pixels (1st..99th percentile of a sample).

    Examples:
        >>> fit_scale_range(sources, 1, metadata.preprocessing, 400, 0)  # doctest: +SKIP
        (8.908, 38.905)
    """
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


def fit_stain(sources: SourceSet, replay: int, spec: Preprocessing, samples: int, seed: int) -> dict[str, Any]:
    """The Reinhard stain reference of the replay (training-lab) images, prepared without stain normalisation.

    Examples:
        >>> fit_stain(sources, 1, metadata.preprocessing, 200, 0)["method"]  # doctest: +SKIP
        'reinhard'
    """
    item = sources.loaded[replay]
    rows = np.unique(balanced_draw(item.train_targets, samples, np.random.default_rng(seed + 1)))
    plain = dataclasses.replace(item.source.spec(spec), stain=None)
    return stain_reference(np.asarray(prepare_image(item.train.load(int(r)), plain)) for r in rows)

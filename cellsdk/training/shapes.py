"""Building a timm model whose shapes fit: its input size (:func:`size_kwargs`) and a pruned checkpoint's channel
counts (:func:`shape_like`).

The leaf that :mod:`cellsdk.training.checkpoint` (loading), :mod:`cellsdk.training.models` (creating) and
:mod:`cellsdk.training.pruning` (pruning) share, so none of them imports another to load a model.

Examples:
    >>> size_kwargs("resnet18", None)
    {}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cellsdk.errors import CheckpointError

__all__ = ["shape_like", "size_kwargs"]


def size_kwargs(arch: str, input_size: int | None) -> dict[str, Any]:
    """``timm.create_model`` arguments that build ``arch`` for ``input_size`` px inputs: ``img_size`` for models
    whose input size is fixed at construction (ViT, DeiT, LeViT, ...), nothing for the others.

    Examples:
        >>> size_kwargs("vit_tiny_patch16_224", 64), size_kwargs("resnet18", 64)  # doctest: +SKIP
        ({'img_size': 64}, {})
    """
    if input_size is None:
        return {}
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:  # pragma: no cover - timm without the registry helper
        return {}
    cfg = get_pretrained_cfg(arch)
    default = tuple(getattr(cfg, "input_size", ()) or ())
    if cfg is not None and getattr(cfg, "fixed_input_size", False) and default and default[-1] != input_size:
        return {"img_size": input_size}
    return {}


def shape_like(model: Any, state: dict[str, torch.Tensor]) -> Any:
    """Shape each convolution, batch norm and linear layer of a freshly built ``model`` to the pruned weights in
    ``state`` (channel counts only: the architecture is the same), so ``load_state_dict`` fits.

    Raises:
        CheckpointError: a layer of another kind whose shape differs (not a pruned model of this architecture).

    Examples:
        >>> from cellsdk.training.models import create_model
        >>> model, _ = create_model("test_efficientnet", 3, "none")
        >>> shape_like(model, model.state_dict()) is model
        True
    """
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None:
            continue
        if tuple(module.weight.shape) == tuple(weight.shape):
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = weight.shape[0]
            module.groups = weight.shape[0] if depthwise else module.groups
            module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = weight.shape[0]
            for buffer in ("running_mean", "running_var"):
                if getattr(module, buffer, None) is not None:
                    setattr(module, buffer, torch.zeros(weight.shape[0]))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        else:
            raise CheckpointError(f"layer {name} ({type(module).__name__}) has weights of shape "
                                  f"{tuple(weight.shape)}, not {tuple(module.weight.shape)}: not a pruned model "
                                  "of this architecture")
        module.weight = nn.Parameter(torch.empty_like(weight))
        bias = state.get(f"{name}.bias")
        if bias is not None and getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty_like(bias))
    return model

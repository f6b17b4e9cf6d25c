"""Export heads: what an artefact outputs beside its logits — the pooled ``features`` the OOD guard scores, and
class activation maps (``cams``) for torch-free explanations.

Examples:
    >>> import torch, timm
    >>> model = timm.create_model("test_efficientnet", num_classes=3, pretrained=False).eval()  # doctest: +SKIP
    >>> cam_support(model) is None  # doctest: +SKIP
    True
    >>> [o.shape[1] for o in with_outputs(model, ("logits", "features"))(torch.zeros(1, 3, 64, 64))]  # doctest: +SKIP
    [3, 32]
"""

from __future__ import annotations

from typing import Any

from cellsdk.errors import ConfigError
from cellsdk.explain import CAMS_OUTPUT
from cellsdk.training.models import model_input_size

__all__ = ["cam_support", "with_features", "with_outputs"]


def with_features(model: Any) -> Any:
    """A module returning ``(logits, features)``: the model's logits and the pooled features they come from.

    This is what every artefact with an OOD guard exports (see :mod:`cellsdk.guard`).

    Examples:
        >>> import timm, torch
        >>> model = timm.create_model("test_efficientnet", num_classes=3, pretrained=False).eval()
        >>> logits, features = with_features(model)(torch.zeros(1, 3, 64, 64))
        >>> tuple(logits.shape), features.shape[0]
        ((1, 3), 1)
    """
    return with_outputs(model, ("logits", "features"))


def cam_support(model: Any, input_size: int | None = None) -> str | None:
    """None when ``model``'s head is global average pooling then one linear layer, so class activation maps
    (CAM, Zhou et al. 2016) need no gradients: ``cams[k] = W[k] . A`` over the final feature maps ``A``, and the
    spatial mean of ``cams[k]`` plus the bias is exactly logit ``k``. Otherwise one line saying why not.

    Checked on the model itself, not on its name: timm's ``forward_head(A, pre_logits=True)`` must equal the
    spatial mean of ``A`` on a test input (MobileNetV3's conv head after pooling, ConvNeXt's norm after pooling
    or a transformer's tokens fail this) and the classifier must be one ``Linear``.

    Examples:
        >>> import timm
        >>> cam_support(timm.create_model("test_efficientnet", num_classes=3, pretrained=False)) is None
        True
    """
    import torch

    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "get_classifier")):
        return f"{type(model).__name__} does not expose forward_features / forward_head (not a timm classifier)"
    classifier = model.get_classifier()
    if not isinstance(classifier, torch.nn.Linear):
        return f"its classifier is {type(classifier).__name__}, not one Linear layer"
    if input_size is None:
        input_size = max(32, min(model_input_size(model), 128))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            example = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
            maps = model.forward_features(example)
            if maps.ndim != 4:
                return f"its final features are {maps.ndim}-D, not N x C x H x W feature maps"
            pooled = model.forward_head(maps, pre_logits=True)
    except Exception as err:  # noqa: BLE001 - a model the check cannot run is a model without maps, not a crash
        return f"the check could not run it at {input_size} px ({type(err).__name__})"
    finally:
        model.train(was_training)
    if pooled.shape != maps.shape[:2] or not torch.allclose(pooled, maps.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5):
        return "its head does more than global average pooling before the classifier"
    return None


def with_outputs(model: Any, outputs: tuple[str, ...], input_size: int | None = None) -> Any:
    """A module returning the named ``outputs`` in order: ``logits`` first, then ``features`` (the pooled
    features the logits come from; the OOD guard's input) and / or ``cams`` (class activation maps,
    ``N x classes x h x w`` in logit units, computed by a 1 x 1 convolution of the final feature maps with a
    copy of the classifier's weights: see :func:`cam_support`).

    Raises:
        ConfigError: an output the model cannot give (``cams`` from a head that is not pooling -> linear).

    Examples:
        >>> import timm, torch
        >>> model = timm.create_model("test_efficientnet", num_classes=3, pretrained=False).eval()
        >>> logits, cams = with_outputs(model, ("logits", "cams"))(torch.zeros(1, 3, 64, 64))
        >>> tuple(cams.shape[:2])
        (1, 3)
    """
    import torch

    unknown = [name for name in outputs[1:] if name not in ("features", CAMS_OUTPUT)]
    if not outputs or outputs[0] != "logits" or unknown:
        raise ConfigError(f"outputs {outputs!r}: logits first, then any of features, {CAMS_OUTPUT}")
    if "features" in outputs and not (hasattr(model, "forward_features") and hasattr(model, "forward_head")
                                      and hasattr(model, "get_classifier")):
        raise ConfigError(f"{type(model).__name__} does not expose pooled features (forward_features / forward_head); "
                          "the OOD guard needs a timm classifier")
    if CAMS_OUTPUT in outputs:
        reason = cam_support(model, input_size)
        if reason:
            raise ConfigError(f"no class activation maps for this model: {reason}")

    class WithOutputs(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner
            self.names = tuple(outputs)
            if CAMS_OUTPUT in outputs:
                head = inner.get_classifier()
                # its own copy of the weights (not shared with the classifier), so quantizers can keep it float
                self.cam = torch.nn.Conv2d(head.in_features, head.out_features, 1, bias=False)
                with torch.no_grad():
                    self.cam.weight.copy_(head.weight.detach()[:, :, None, None])

        def forward(self, x: Any) -> Any:
            maps = self.model.forward_features(x)
            features = self.model.forward_head(maps, pre_logits=True)
            logits = self.model.get_classifier()(features)
            if len(self.names) == 1:
                return logits
            values = {"logits": logits, "features": features}
            if CAMS_OUTPUT in self.names:
                values[CAMS_OUTPUT] = self.cam(maps)
            return tuple(values[name] for name in self.names)

    return WithOutputs(model).eval()

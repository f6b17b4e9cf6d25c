"""Grad-CAM in PyTorch, from a checkpoint: explanations for any head, and the reference for the torch-free maps.

The runtimes explain pooling -> linear heads with class activation maps (:mod:`cellsdk.explain`), which need
no gradients. Other heads (a conv head after pooling, a norm after pooling, a transformer) need gradients:
:func:`grad_cam` runs Grad-CAM (Selvaraju et al. 2017) with the ``grad-cam`` package on the fp32 checkpoint
and returns the same :class:`~cellsdk.explain.Explanation`, aligned with the raw image. For pooling -> linear
heads Grad-CAM and CAM are the same map up to a positive scale (the gradient of a logit with respect to the
feature maps is the class's weights over the grid size), which is what the sanity benchmark checks
(``python -m cellsdk.benchmarks.studies.explanations``).

Examples:
    >>> from cellsdk.training.gradcam import grad_cam  # doctest: +SKIP
    >>> grad_cam("models/bloodmnist_effnet_lite0_128.safetensors", "cell.jpg").target  # doctest: +SKIP
    'neutrophil'
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cellsdk.errors import BackendNotInstalledError, ConfigError
from cellsdk.explain import Explanation, align_map, resolve_target
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import softmax
from cellsdk.prediction import Prediction
from cellsdk.preprocessing import ImageSource, crop_box, load_image, prepare_image, to_input_array

__all__ = ["GradCamExplainer", "feature_layer", "grad_cam"]


def _package() -> Any:
    try:
        import pytorch_grad_cam
    except ImportError:
        raise BackendNotInstalledError("Grad-CAM needs the grad-cam package, which is not installed: "
                                       "pip install 'cellsdk[explain]'") from None
    return pytorch_grad_cam


def feature_layer(model: Any, input_size: int | None = None) -> tuple[Any, Any, Any]:
    """``model`` with an identity module ``tap`` on its final feature maps (what Grad-CAM hooks, whatever the
    architecture), that module, and the reshape turning a transformer's tokens into a square grid (None for
    convolutional maps).

    Raises:
        ConfigError: a model without ``forward_features`` / ``forward_head``, or tokens that are no square grid.

    Examples:
        >>> tapped = feature_layer(model)  # doctest: +SKIP
        >>> hasattr(tapped, "tap")  # doctest: +SKIP
        True
    """
    import torch

    from cellsdk.training.models import model_input_size

    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ConfigError(f"{type(model).__name__} has no forward_features / forward_head: Grad-CAM needs a timm "
                          "classifier")

    class Tapped(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.tap = torch.nn.Identity()

        def forward(self, x: Any) -> Any:
            return self.inner.forward_head(self.tap(self.inner.forward_features(x)))

    tapped = Tapped(model).eval()
    size = input_size or model_input_size(model)
    with torch.no_grad():
        final = model.forward_features(torch.zeros(1, 3, size, size))
    if final.ndim == 4:
        return tapped, tapped.tap, None
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    tokens = final.shape[1] - prefix if final.ndim == 3 else 0
    side = math.isqrt(int(tokens))
    if final.ndim != 3 or side * side != tokens:
        raise ConfigError(f"final features of shape {tuple(final.shape)} are neither maps nor a square grid of tokens")

    def reshape(values: Any) -> Any:  # N x (prefix + side^2) x C -> N x C x side x side
        grid = values[:, prefix:, :].reshape(values.shape[0], side, side, values.shape[2])
        return grid.permute(0, 3, 1, 2)

    return tapped, tapped.tap, reshape


class GradCamExplainer:
    """Grad-CAM for one PyTorch model (reuse it for many images: the hooks are set once).

    Args:
        model: a timm classifier in eval mode, or a checkpoint path (loaded with its metadata).
        metadata: the model's metadata (labels, preprocessing); read from the checkpoint when a path is given.
    """

    def __init__(self, model: Any, metadata: ModelMetadata | None = None) -> None:
        package = _package()
        if isinstance(model, (str, os.PathLike)):
            from cellsdk.training.checkpoint import load_checkpoint

            model, metadata = load_checkpoint(model)
        if metadata is None:
            raise ConfigError("GradCamExplainer needs the model's metadata (labels, preprocessing), or a checkpoint")
        self.metadata = metadata
        self.model, layer, reshape = feature_layer(model.eval(), metadata.preprocessing.input_size)
        self._cam = package.GradCAM(model=self.model, target_layers=[layer], reshape_transform=reshape)

    def explain(self, images: Sequence[ImageSource], target: str | int | None = None) -> list[Explanation]:
        """Grad-CAM explanations of ``images`` for ``target`` (default: each image's predicted class).

        Examples:
            >>> explainer = GradCamExplainer(model, metadata)  # doctest: +SKIP
            >>> [e.method for e in explainer.explain(["cell.jpg"])]  # doctest: +SKIP
            ['grad-cam']
        """
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        spec = self.metadata.preprocessing
        labels = self.metadata.labels
        wanted = resolve_target(target, labels)
        raw = [load_image(image) for image in images]
        batch = torch.from_numpy(np.stack([to_input_array(np.asarray(prepare_image(img, spec)), spec) for img in raw]))
        with torch.no_grad():
            probabilities = softmax(self.model(batch).double().numpy())
        indices = [wanted if wanted is not None else int(np.argmax(row)) for row in probabilities]
        maps = self._cam(input_tensor=batch, targets=[ClassifierOutputTarget(i) for i in indices])
        explained = []
        for image, row, index, grid in zip(raw, probabilities, indices, maps, strict=True):
            best = int(np.argmax(row))
            order = np.argsort(-row, kind="stable")[:3]
            prediction = Prediction(labels[best], best, float(row[best]),
                                    {label: float(p) for label, p in zip(labels, row, strict=True)},
                                    tuple((labels[int(i)], float(row[i])) for i in order))
            box = crop_box(image.size, spec)
            explained.append(Explanation(heatmap=align_map(grid, image.size, box), target=labels[index], index=index,
                                         probability=float(row[index]), prediction=prediction,
                                         cam=np.asarray(grid, dtype=np.float32), box=box, method="grad-cam",
                                         image=image))
        return explained


def grad_cam(model: Any, image: ImageSource, target: str | int | None = None, *,
             metadata: ModelMetadata | None = None) -> Explanation:
    """Grad-CAM of one image from a checkpoint (path) or a model with its metadata; see :class:`GradCamExplainer`.

    ``cam`` is the package's map at the model's input size (rectified, scaled to [0, 1]); ``heatmap`` is
    aligned with the raw image like :meth:`cellsdk.Classifier.explain`'s.

    Examples:
        >>> grad_cam("runs/a/best.safetensors", "cell.jpg").target  # doctest: +SKIP
        'neutrophil'
    """
    return GradCamExplainer(model, metadata).explain([image], target)[0]

"""Build the test vectors every artefact carries (:mod:`cellsdk.testvectors`) from held-out images and the fp32 model.

:func:`build` picks a seeded, class-balanced set of held-out images the fp32 reference classifies right and not
on a knife's edge (top-1 margin at least :data:`MIN_MARGIN`, where there are such images), keeps their bytes as
they are on disk when the whole set fits the artefact's budget, else re-encodes each image's model crop at the
model's input size (JPEG, quality 90; PNG for data without files), and runs the fp32 PyTorch model on exactly
those bytes through the runtime's own decoding and preprocessing. :func:`fit` keeps as many of them as the
artefact's budget allows (``min(10 %, 400 KB)``), classes in turn so that any prefix stays balanced.

Examples:
    >>> vectors = build(job, images, reference_logits, VerifyConfig().to_dict(), data_cropped=True)  # doctest: +SKIP
    >>> fit(vectors, artefact_bytes=4_400_000).nbytes() <= 400_000  # doctest: +SKIP
    True
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import crop_box, load_image, prepare_image, to_input_array
from cellsdk.testvectors import TestVectors, size_budget

__all__ = ["DEFAULT_IMAGES", "MIN_MARGIN", "build", "fit"]

#: how many images an artefact carries at most (the budget may allow fewer)
DEFAULT_IMAGES = 32
#: the smallest gap between the reference's two most likely classes for an image to be chosen: an image on the
#: edge flips between two correct runtimes, and a float self-check allows no flip
MIN_MARGIN = 0.1
_RAW_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def build(job: Any, images: Any, reference: np.ndarray, thresholds: dict[str, float], *, data_cropped: bool,
          count: int = DEFAULT_IMAGES, seed: int = 0) -> TestVectors | None:
    """The full set of vectors for a conversion (before :func:`fit` trims it per artefact).

    Args:
        job: the :class:`~cellsdk.converters.base.ExportJob` (its ``exported`` module gives every output).
        images: the evaluation :class:`~cellsdk.converters.calibration.ImageSet` (ids are file paths or
            ``file[split][i]`` of arrays).
        reference: the fp32 logits on ``images`` (to choose images it classifies right).
        thresholds: the gate's thresholds, carried along for the self-check.
        data_cropped: the images already have the model's crop.
        count: images to choose at most.
        seed: the sampling seed.

    Returns:
        The vectors, or None when there are no images.

    Examples:
        >>> vectors = build(model, metadata, images)  # doctest: +SKIP
        >>> len(vectors)  # doctest: +SKIP
        32
    """
    spec = job.metadata.preprocessing.without_crop() if data_cropped else job.metadata.preprocessing
    order = _choose(images.targets, reference, count, seed)
    if not len(order):
        return None
    found = [_raw_file(images.ids[i]) for i in order]
    raw = [r for r in found if r is not None]
    budget = size_budget(_model_bytes(job))
    encoded: list[tuple[bytes, str]]
    if len(raw) == len(found) and sum(len(blob) for blob, _ in raw) * 4 // 3 <= budget // 2:  # base64: 4/3
        encoded = raw
        ids = [Path(images.ids[i]).name for i in order]
    else:  # too large (full-resolution originals) or no files: the model's crop at its input size
        encoded = [_reencode(images, int(i), spec) for i in order]
        ids = [f"{Path(images.ids[i]).name} (crop at {spec.input_size} px, re-encoded)" for i in order]
        spec = Preprocessing(**{**spec.to_dict(), "crop_mode": "none", "crop_value": 1.0})
    blobs, media = [blob for blob, _ in encoded], [kind for _, kind in encoded]
    batch = np.stack([to_input_array(prepare_image(load_image(b, name=n), spec), spec)
                      for b, n in zip(blobs, ids, strict=True)])
    outputs = _reference_outputs(job, batch)
    return TestVectors(tuple(blobs), tuple(media), tuple(ids), tuple(int(images.targets[i]) for i in order),
                       outputs["logits"].astype(np.float32), outputs.get("features"), outputs.get("cams"),
                       dict(thresholds), spec.to_dict())


def fit(vectors: TestVectors | None, artefact_bytes: int) -> TestVectors | None:
    """The largest balanced prefix of ``vectors`` within an artefact's budget (None when not even one fits).

    Examples:
        >>> fit(None, 10_000) is None
        True
    """
    if vectors is None:
        return None
    budget = size_budget(artefact_bytes)
    n = len(vectors)
    per_image = max(1, vectors.nbytes() // n)
    n = min(n, max(1, budget // per_image + 1))
    while n >= 1:
        candidate = vectors.subset(list(range(n))) if n < len(vectors) else vectors
        if candidate.nbytes() <= budget:
            return candidate
        n -= 1
    return None


def _choose(targets: np.ndarray, reference: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices, classes in turn (a prefix stays balanced), of images the reference gets right with a margin."""
    rng = np.random.default_rng(seed)
    z = reference - reference.max(axis=1, keepdims=True)
    probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    right = probabilities.argmax(1) == targets
    per_class: list[list[int]] = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        good = members[right[members] & (margin[members] >= MIN_MARGIN)]
        rest = np.setdiff1d(members, good)  # used only where a class has too few good images
        per_class.append([int(i) for i in rng.permutation(good)] + [int(i) for i in rng.permutation(rest)])
    order: list[int] = []
    while len(order) < count and any(per_class):
        for queue in per_class:
            if queue and len(order) < count:
                order.append(queue.pop(0))
    return np.asarray(order, dtype=int)


def _raw_file(image_id: str) -> tuple[bytes, str] | None:
    path = Path(image_id)
    media = _RAW_MEDIA.get(path.suffix.lower())
    if media is None or not path.is_file():
        return None
    return path.read_bytes(), media


def _reencode(images: Any, index: int, spec: Preprocessing) -> tuple[bytes, str]:
    """An image's model crop, resized to the input size, as JPEG (PNG for arrays: no loss on tiny images)."""
    source = images.ids[index]
    path = Path(source)
    image = load_image(path if path.is_file() else _array_of(images, index, spec))
    image = image.crop(crop_box(image.size, spec)) if spec.crop_mode != "none" else image
    side = spec.input_size
    from PIL import Image

    image = image.resize((side, side), Image.Resampling.BICUBIC) if image.size != (side, side) else image
    buffer = io.BytesIO()
    if path.is_file():
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue(), "image/jpeg"
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue(), "image/png"


def _array_of(images: Any, index: int, spec: Preprocessing) -> np.ndarray:
    """An image without a file (a ``.npz`` dataset): its model input (made with ``spec``), undone to 8-bit RGB."""
    array = np.asarray(images.arrays[index], dtype=np.float64)  # 3 x H x W, normalised, in spec's colour order
    if spec.color_order == "BGR":
        array = array[::-1]
    mean, std = np.asarray(spec.mean)[:, None, None], np.asarray(spec.std)[:, None, None]
    return np.clip((array * std + mean).transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)


def _model_bytes(job: Any) -> int:
    """The fp32 model's size in bytes (the budget of the largest artefact; :func:`fit` trims per artefact)."""
    return int(sum(p.numel() * 4 for p in job.model.parameters()))


def _reference_outputs(job: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    names = tuple(job.metadata.outputs)
    with torch.inference_mode():
        result = job.exported.eval()(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    values = result if isinstance(result, (tuple, list)) else (result,)
    return {name: value.float().numpy().astype(np.float64) for name, value in zip(names, values, strict=True)}

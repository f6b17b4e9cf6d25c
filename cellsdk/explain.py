"""Where the model looked: class activation maps, torch-free, aligned with the raw image.

For a backbone whose head is global average pooling then one linear layer (EfficientNet, MobileNetV2,
ResNet ...), logit ``k`` is the spatial mean of ``W[k] . A(x, y)`` over the final feature maps ``A`` plus a
bias. ``cellsdk-convert`` therefore adds an output ``cams`` to every artefact (``N x classes x h x w``: a
1 x 1 convolution of the feature maps with a copy of the classifier's weights, kept in float in int8
artefacts), and explaining an image costs one ordinary inference: no gradients, no PyTorch, in every
runtime (ONNX Runtime, OpenVINO, TorchScript; CoreML on macOS). The map of the target class is rectified
(evidence *for* the class), scaled to [0, 1], upsampled over the crop the model saw and placed in the
raw image's frame (0 outside the crop), so ``heatmap[y, x]`` belongs to the raw pixel ``(x, y)``.

Other heads have no such output; the runtime says so in one line, and Grad-CAM from the checkpoint in
PyTorch (:func:`cellsdk.training.gradcam.grad_cam`, the ``grad-cam`` package) explains them instead.

Examples:
    >>> cam = np.zeros((4, 4), dtype=np.float32); cam[0, 3] = 2.0  # evidence in the top-right cell
    >>> heat = align_map(cam, (40, 20), (10, 0, 30, 20))  # a 20 px crop in the middle of a 40 x 20 image
    >>> heat.shape, np.unravel_index(int(np.argmax(heat)), heat.shape), float(heat.max()), float(heat[:, :10].max())
    ((20, 40), (np.int64(0), np.int64(27)), 1.0, 0.0)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cellsdk._io import atomic_path
from cellsdk.errors import CellSDKError, ConfigError, ExplanationUnavailableError
from cellsdk.prediction import Prediction
from cellsdk.tta import tta_views

if TYPE_CHECKING:
    from cellsdk.classifier import Classifier
    from cellsdk.preprocessing import ImageSource

__all__ = ["CAMS_OUTPUT", "Explanation", "SavedExplanation", "align_map", "cam_grids", "colorize", "evaluation_montage",
           "explain_images", "heat_layer", "montage", "overlay", "require_cams", "resolve_target", "save_explanations"]

#: the name of the class-activation-map output in every artefact that has one
CAMS_OUTPUT = "cams"

#: a perceptually ordered colour map (dark blue -> cyan -> yellow -> red), 256 x 3 uint8; no matplotlib
_STOPS = np.array([[0.0, 0, 0, 96], [0.25, 0, 96, 255], [0.5, 0, 224, 192], [0.75, 255, 224, 0],
                   [1.0, 224, 0, 0]], dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)],
                axis=1).round().astype(np.uint8)


@dataclass(frozen=True)
class Explanation:
    """Where the model looked for one image and one class.

    Attributes:
        heatmap: float32 ``H x W`` in [0, 1], aligned with the raw image (``heatmap[y, x]`` is raw pixel
            ``(x, y)``): the target class's rectified activation map, 1 at its peak, 0 outside the crop.
        target: the class explained (the predicted one unless another was asked for).
        index: its index in the model's labels.
        probability: the model's probability of ``target``.
        prediction: the ordinary prediction for the image (guard verdict included).
        cam: float32 ``h x w``: the target's map on the model's feature grid, in logit units, unrectified
            (its mean plus the classifier's bias is the target's logit; with TTA, the mean over the views).
        box: ``(left, top, right, bottom)``: the raw-image region the model saw (the crop).
        method: ``cam`` (class activation map, torch-free) or ``grad-cam`` (PyTorch, from a checkpoint).
        image: the raw RGB image, for :meth:`overlay` (not compared, not printed).
    """

    heatmap: np.ndarray
    target: str
    index: int
    probability: float
    prediction: Prediction
    cam: np.ndarray
    box: tuple[int, int, int, int]
    method: str = "cam"
    image: Image.Image | None = field(default=None, repr=False, compare=False)

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The raw image with the heat map blended over it (see :func:`overlay`).

        Examples:
            >>> from cellsdk import Classifier
            >>> Classifier.load(self_check=False).explain("samples/pbc_raw/ig/MMY_163947.jpg").overlay().size
            (360, 363)
        """
        if self.image is None:
            raise ConfigError("this explanation holds no image: use cellsdk.explain.overlay(image, explanation.heatmap)")
        return overlay(self.image, self.heatmap, alpha=alpha)

    def save(self, path: str | os.PathLike, alpha: float = 0.5) -> Path:
        """Write :meth:`overlay` as a PNG at ``path`` (atomically); returns the path.

        Examples:
            >>> from cellsdk import Classifier
            >>> Classifier.load().explain("cell.jpg").save("cell.heat.png")  # doctest: +SKIP
            PosixPath('cell.heat.png')
        """
        target = Path(path)
        with atomic_path(target) as staged:
            self.overlay(alpha).save(staged, format="PNG")
        return target

    def png(self, alpha: float = 0.5, max_side: int | None = None) -> bytes:
        """:meth:`overlay` as PNG bytes, at most ``max_side`` pixels on its long side (e.g. for a web page).

        Examples:
            >>> from cellsdk import Classifier
            >>> Classifier.load(self_check=False).explain("samples/pbc_raw/ig/MMY_163947.jpg").png(max_side=64)[:4]
            b'\x89PNG'
        """
        image = self.overlay(alpha)
        if max_side is not None and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays): target, its probability, method, crop box and the map's peak in
        raw-image pixels.

        Examples:
            >>> from cellsdk import Classifier
            >>> summary = Classifier.load(self_check=False).explain("samples/pbc_raw/ig/MMY_163947.jpg").to_dict()
            >>> summary["target"], summary["box"], summary["grid"]
            ('ig', [80, 81, 280, 281], [4, 4])
        """
        y, x = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape) if self.heatmap.size else (0, 0)
        return {"target": self.target, "index": self.index, "probability": self.probability, "method": self.method,
                "box": list(self.box), "peak": [int(x), int(y)], "grid": list(self.cam.shape)}


def cam_grids(values: np.ndarray, classes: int) -> np.ndarray:
    """A ``cams`` output as ``N x classes x h x w`` (runtimes that flatten it, like CoreML, give ``N x k*h*w``;
    the grid is square, as the model input is).

    Raises:
        ExplanationUnavailableError: an output of the wrong size.

    Examples:
        >>> cam_grids(np.zeros((2, 3 * 16)), classes=3).shape  # flattened by the runtime
        (2, 3, 4, 4)
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 4 and values.shape[1] == classes:
        return values
    cells = values.size // max(1, len(values) * classes)
    side = math.isqrt(cells)
    if values.ndim < 2 or side * side != cells or values.size != len(values) * classes * cells:
        raise ExplanationUnavailableError(f"the model's {CAMS_OUTPUT} output has shape {tuple(values.shape)}, not "
                                          f"N x {classes} x h x w: re-convert it with cellsdk-convert")
    return values.reshape(len(values), classes, side, side)


def align_map(cam: np.ndarray, image_size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A feature-grid map (``h x w``) as a float32 heat map over the raw image (``image_size`` = width, height).

    The map is rectified (negative evidence is 0), scaled so its peak is 1, resized bilinearly over ``box``
    (the crop the model saw, see :func:`cellsdk.preprocessing.crop_box`) and placed in a zero canvas. A map
    with no positive evidence is all zeros.

    Examples:
        >>> align_map(np.ones((2, 2)), (8, 4), (2, 0, 6, 4)).shape
        (4, 8)
    """
    width, height = image_size
    left, top, right, bottom = box
    positive = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = float(positive.max()) if positive.size else 0.0
    canvas = np.zeros((height, width), dtype=np.float32)
    if peak <= 0 or right <= left or bottom <= top:
        return canvas
    grid = Image.fromarray(positive / peak, mode="F")
    resized = np.clip(np.asarray(grid.resize((right - left, bottom - top), Image.Resampling.BILINEAR),
                                 dtype=np.float32), 0.0, None)
    top_value = float(resized.max())  # the grid cell's centre may fall between pixels: the peak pixel is 1
    if top_value > 0:
        canvas[top:bottom, left:right] = np.minimum(resized / top_value, 1.0)
    return canvas


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """``H x W`` values in [0, 1] as ``H x W x 3`` uint8 colours (dark blue = 0 ... red = 1).

    Examples:
        >>> colorize(np.array([[0.0, 1.0]])).tolist()
        [[[0, 0, 96], [224, 0, 0]]]
    """
    index = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _LUT[index]


def overlay(image: Image.Image | np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` (RGB, the heat map's size) with the coloured heat map blended in where it is positive: the
    colour's weight is the map's value times ``alpha``, so cold regions keep the original pixels.

    Raises:
        ConfigError: ``alpha`` outside [0, 1] or a heat map of another size than the image.

    Examples:
        >>> image = Image.new("RGB", (4, 2), (200, 200, 200))
        >>> overlay(image, np.zeros((2, 4))).getpixel((0, 0))  # no evidence: the original pixel
        (200, 200, 200)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha!r}: use a value between 0 and 1")
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    heat = np.asarray(heatmap, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[:2] != heat.shape:
        raise ConfigError(f"heat map {heat.shape[::-1]} and image {pixels.shape[1::-1]} differ in size: "
                          "explain the same image you overlay")
    weight = (alpha * np.clip(np.nan_to_num(heat), 0.0, 1.0))[..., None]
    blended = pixels * (1.0 - weight) + colorize(heat).astype(np.float32) * weight
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def heat_layer(heatmap: np.ndarray, max_side: int | None = None, alpha: float = 0.7) -> Image.Image:
    """The heat map alone as an RGBA picture to lay over the image (a web page's overlay): the map's colour,
    transparent where the map is 0 and ``alpha`` opaque at its peak; at most ``max_side`` pixels on its long side.

    Examples:
        >>> layer = heat_layer(np.array([[0.0, 1.0]]))
        >>> layer.mode, layer.getpixel((0, 0))[3], layer.getpixel((1, 0))[3]
        ('RGBA', 0, 178)
    """
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    rgba = np.dstack([colorize(heat), np.round(heat * alpha * 255.0).astype(np.uint8)])
    picture = Image.fromarray(rgba, mode="RGBA")
    if max_side is not None and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return picture


def resolve_target(target: str | int | None, labels: Sequence[str]) -> int | None:
    """The class index ``target`` names (a label or an index), None for "the predicted class".

    Raises:
        ConfigError: an unknown label or an index out of range, listing the labels.

    Examples:
        >>> resolve_target("b", ["a", "b"]), resolve_target(0, ["a", "b"]), resolve_target(None, ["a", "b"])
        (1, 0, None)
    """
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if 0 <= int(target) < len(labels):
            return int(target)
    elif isinstance(target, str) and target in labels:
        return list(labels).index(target)
    raise ConfigError(f"target={target!r} is not one of the model's classes: use a label ({', '.join(labels)}) "
                      f"or an index 0..{len(labels) - 1}")


def explain_images(classifier: Classifier, images: Sequence[ImageSource], target: str | int | None = None, *,
                   tta: str | None = None, top_k: int | None = None) -> list[Explanation]:
    """Explanations for ``images`` in one runtime call (the work behind :meth:`Classifier.explain`).

    Raises:
        ExplanationUnavailableError: the model has no ``cams`` output (a head that is not pooling -> linear,
            or a model converted without it), naming what to do instead.
        ConfigError: an unknown ``target`` or ``tta`` mode.
        InvalidImageError: an image that cannot be read (nothing else is lost).

    Examples:
        >>> from cellsdk import Classifier
        >>> [e.target for e in explain_images(Classifier.load(self_check=False), ["samples/pbc_raw/ig/MMY_163947.jpg"])]
        ['ig']
    """
    from cellsdk.preprocessing import crop_box, load_image

    require_cams(classifier)
    wanted = resolve_target(target, classifier.labels)
    views = tta_views(classifier.tta if tta is None else tta)
    inference = classifier.inference
    raw = [load_image(image) for image in images]
    result = inference.run([inference.prepare(image) for image in raw], top_k=top_k, views=views)
    predictions = result.predictions
    grids = views.unview(cam_grids(result.outputs[CAMS_OUTPUT], len(classifier.labels)))
    spec = classifier.metadata.preprocessing
    explained = []
    for image, prediction, grid in zip(raw, predictions, grids, strict=True):
        index = wanted if wanted is not None else int(np.argmax(list(prediction.probabilities.values())))
        box = crop_box(image.size, spec)
        label = classifier.labels[index]
        explained.append(Explanation(heatmap=align_map(grid[index], image.size, box), target=label, index=index,
                                     probability=float(prediction.probabilities[label]), prediction=prediction,
                                     cam=np.ascontiguousarray(grid[index], dtype=np.float32), box=box, image=image))
    return explained


def require_cams(classifier: Classifier) -> None:
    """Raise :class:`ExplanationUnavailableError` (one line, with what to do) unless the model has ``cams``.

    Examples:
        >>> from cellsdk import Classifier
        >>> require_cams(Classifier.load(self_check=False)) is None  # the shipped model has class activation maps
        True
    """
    if CAMS_OUTPUT in classifier.metadata.outputs:
        return
    raise ExplanationUnavailableError(
        f"{classifier.path.name} has no class-activation-map output, so it cannot explain its predictions in "
        f"{classifier.backend_name}: re-convert its checkpoint with cellsdk-convert (which adds one when the head "
        "is global pooling -> linear), or for other heads use Grad-CAM from the checkpoint in PyTorch "
        "(cellsdk.training.gradcam.grad_cam)")


def montage(rows: Sequence[tuple[str, Sequence[tuple[Explanation, str]]]], tile: int = 176,
            columns: int | None = None) -> Image.Image:
    """A labelled grid of overlays: one titled band per ``(title, [(explanation, caption), ...])``.

    Examples:
        >>> from cellsdk import Classifier
        >>> explanation = Classifier.load(self_check=False).explain("samples/pbc_raw/ig/MMY_163947.jpg")
        >>> montage([("errors", []), ("correct", [(explanation, "truth ig")])], tile=64).size
        (76, 254)
    """
    from PIL import ImageDraw, ImageFont, ImageOps

    font = ImageFont.load_default()
    columns = columns or max([len(items) for _, items in rows] + [1])
    caption_height, title_height, pad = 30, 24, 6
    bands = []
    for title, items in rows:
        lines = max(1, math.ceil(len(items) / columns))
        bands.append((title, items, title_height + lines * (tile + caption_height + pad)))
    width = columns * (tile + pad) + pad
    sheet = Image.new("RGB", (width, sum(h for *_, h in bands) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = pad
    for title, items, height in bands:
        draw.text((pad, top + 4), title, fill=(0, 0, 0), font=font)
        for i, (explanation, caption) in enumerate(items):
            x = pad + (i % columns) * (tile + pad)
            y = top + title_height + (i // columns) * (tile + caption_height + pad)
            picture = ImageOps.contain(explanation.overlay(), (tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(picture, (x + (tile - picture.width) // 2, y + (tile - picture.height) // 2))
            for line, text in enumerate(caption.split("\n")[:2]):
                draw.text((x, y + tile + 2 + 13 * line), text[:34], fill=(0, 0, 0), font=font)
        top += height
    return sheet


def evaluation_montage(classifier: Classifier, images: Sequence[ImageSource], targets: np.ndarray,
                       probabilities: np.ndarray, count: int, *, seed: int = 0) -> tuple[Image.Image, dict[str, Any]]:
    """The ``count`` most confident errors and ``count`` random correct images, explained and labelled with
    truth and prediction (what ``cellsdk-eval --explain N`` writes), and which images they were.

    Examples:
        >>> from cellsdk import Classifier
        >>> sheet, record = evaluation_montage(Classifier.load(), images, targets, probabilities, 4)  # doctest: +SKIP
        >>> record["errors"]  # doctest: +SKIP
        [17, 203]
    """
    require_cams(classifier)
    labels = classifier.labels
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != targets)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    right = np.flatnonzero(predicted == targets)
    right = np.sort(np.random.default_rng(seed).choice(right, size=min(count, len(right)), replace=False))
    bands = []
    for title, chosen in ((f"most confident errors ({len(wrong)})", wrong), (f"random correct ({len(right)})", right)):
        items = []
        for start in range(0, len(chosen), 16):
            part = chosen[start:start + 16]
            for index, explanation in zip(part, explain_images(classifier, [images[i] for i in part]), strict=True):
                items.append((explanation, f"truth {labels[targets[index]]}\npred {explanation.target} "
                                           f"{explanation.probability * 100:.1f}%"))
        bands.append((title, items))
    record = {"errors": [int(i) for i in wrong], "correct": [int(i) for i in right], "seed": seed}
    return montage(bands, columns=min(max(count, 1), 8)), record


@dataclass(frozen=True)
class SavedExplanation:
    """One image of :func:`save_explanations`: its explanation and overlay file, or the error that replaced them.

    Attributes:
        source: the input as given.
        explanation: where the model looked (None when the image failed).
        file: the overlay PNG written (None when the image failed).
        error: why the image could not be explained (None when it was).
    """

    source: Any
    explanation: Explanation | None = None
    file: Path | None = None
    error: CellSDKError | None = None


def save_explanations(classifier: Classifier, images: Iterable[ImageSource], out_dir: str | os.PathLike, *,
                      target: str | int | None = None, tta: str | None = None) -> Iterator[SavedExplanation]:
    """Explain each image and write its overlay PNG into ``out_dir`` (what ``cellsdk predict --explain`` does), one
    image at a time: an image that fails is yielded with its error, and nothing else is lost.

    Files are named ``<stem>.<class>.png`` after the image (``image-<n>`` for inputs that are not paths); a stem seen
    before gets ``-2``, ``-3`` ... so no overlay replaces another.

    Raises:
        ExplanationUnavailableError: before anything is written, for a model that cannot explain.

    Examples:
        >>> from cellsdk import Classifier
        >>> saved = list(save_explanations(Classifier.load(), ["samples/pbc_raw/ig/MMY_163947.jpg"], "overlays"))
        ... # doctest: +SKIP
        >>> saved[0].file.name  # doctest: +SKIP
        'MMY_163947.ig.png'
    """
    require_cams(classifier)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for index, source in enumerate(images):
        try:
            explanation = explain_images(classifier, [source], target, tta=tta)[0]
        except CellSDKError as err:
            yield SavedExplanation(source, error=err)
            continue
        stem = Path(source).stem if isinstance(source, (str, os.PathLike)) else f"image-{index}"
        name, counter = f"{stem}.{explanation.target}.png", 2
        while name in used:
            name, counter = f"{stem}-{counter}.{explanation.target}.png", counter + 1
        used.add(name)
        yield SavedExplanation(source, explanation, explanation.save(folder / name))

"""Training augmentation on PIL images, driven by a numpy generator (torch-free).

Augmentation runs after :func:`~cellsdk.preprocessing.prepare_image` and
before :func:`~cellsdk.preprocessing.to_input_array`, so training, evaluation
and the runtime share every other step.

Examples:
    >>> import numpy as np
    >>> from PIL import Image
    >>> from cellsdk.training.config import AugmentConfig
    >>> out = augment_image(Image.new("RGB", (16, 16), (200, 100, 50)), AugmentConfig(), np.random.default_rng(0))
    >>> out.size
    (16, 16)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from cellsdk.training.config import AugmentConfig

__all__ = ["augment_image"]


def augment_image(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """Apply a random draw of ``config`` to an RGB image of any size; the size is kept.

    Examples:
        >>> from PIL import Image
        >>> from cellsdk.training.config import AugmentConfig
        >>> augment_image(Image.new("RGB", (32, 32)), AugmentConfig.light(), np.random.default_rng(0)).size
        (32, 32)
    """
    if config.hflip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if config.vflip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if config.rotate90:
        turns = int(rng.integers(0, 4))
        if turns:
            image = image.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                     Image.Transpose.ROTATE_270)[turns - 1])
    if config.rotation_degrees > 0 or config.translate > 0 or config.scale != (1.0, 1.0):
        image = _affine(image, config, rng)
    return _color_jitter(image, config, rng)


def _border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour of the image border: the fill for uncovered corners."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))  # type: ignore[return-value]


def _affine(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    angle = math.radians(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
    scale = rng.uniform(*config.scale)
    shift_x = rng.uniform(-config.translate, config.translate) * width
    shift_y = rng.uniform(-config.translate, config.translate) * height
    # PIL's affine maps output -> input coordinates: invert rotate+scale about the centre, then shift
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cx, cy = width / 2, height / 2
    matrix = (
        cos, sin, cx - cos * (cx + shift_x) - sin * (cy + shift_y),
        -sin, cos, cy + sin * (cx + shift_x) - cos * (cy + shift_y),
    )
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR,
                           fillcolor=_border_colour(image))


def _color_jitter(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    for amount, enhancer in ((config.brightness, ImageEnhance.Brightness),
                             (config.contrast, ImageEnhance.Contrast),
                             (config.saturation, ImageEnhance.Color)):
        if amount > 0:
            image = enhancer(image).enhance(rng.uniform(1 - amount, 1 + amount))
    if config.hue > 0:
        shift = round(rng.uniform(-config.hue, config.hue) * 255)
        if shift:
            hsv = np.asarray(image.convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
            image = Image.fromarray(hsv, mode="HSV").convert("RGB")
    return image

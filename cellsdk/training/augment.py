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

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from cellsdk.normalise import border_colour
from cellsdk.training.config import AugmentConfig

__all__ = ["augment_image", "camera_defects", "hed_jitter"]


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
    image = _color_jitter(image, config, rng)
    if config.stain > 0:
        image = Image.fromarray(hed_jitter(np.asarray(image), config.stain, rng))
    return camera_defects(image, config, rng)


def camera_defects(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """Another camera's defects, each with its probability in ``config``: defocus blur (Gaussian, radius 0.3–1.5
    px), sensor noise (Gaussian, sigma 2–10 grey levels) and JPEG re-compression (quality 30–90).

    Examples:
        >>> from cellsdk.training.config import AugmentConfig
        >>> image = Image.new("RGB", (16, 16), (200, 100, 50))
        >>> camera_defects(image, AugmentConfig(), np.random.default_rng(0)) is image
        True
        >>> camera_defects(image, AugmentConfig(blur=1, noise=1, jpeg=1), np.random.default_rng(0)).size
        (16, 16)
    """
    if config.blur and rng.random() < config.blur:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    if config.noise and rng.random() < config.noise:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, float(rng.uniform(2.0, 10.0)), pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if config.jpeg and rng.random() < config.jpeg:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image


#: Ruifrok & Johnston's haematoxylin, eosin and DAB optical-density vectors (rows), as scikit-image uses them
_HED_FROM_RGB = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))
_RGB_FROM_HED = np.linalg.inv(_HED_FROM_RGB)


def hed_jitter(pixels: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Stain augmentation (Tellez et al. 2018): scale and shift each stain channel of the HED colour space.

    Each of haematoxylin, eosin and DAB is multiplied by ``U(1 - amount, 1 + amount)`` and shifted by
    ``U(-amount, amount)`` in optical density: another lab's stain strength and hue, not a random tint.

    Examples:
        >>> out = hed_jitter(np.full((4, 4, 3), 180, np.uint8), 0.05, np.random.default_rng(0))
        >>> out.shape, out.dtype
        ((4, 4, 3), dtype('uint8'))
        >>> bool(np.array_equal(hed_jitter(np.full((2, 2, 3), 90, np.uint8), 0.0, np.random.default_rng(0)),
        ...                     np.full((2, 2, 3), 90, np.uint8)))
        True
    """
    rgb = np.maximum(np.asarray(pixels, dtype=np.float64), 1.0) / 255.0
    density = -np.log(rgb) @ _HED_FROM_RGB
    alpha = rng.uniform(1 - amount, 1 + amount, size=3)
    beta = rng.uniform(-amount, amount, size=3)
    density = density * alpha + beta
    out = np.exp(-(density @ _RGB_FROM_HED)) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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
                           fillcolor=border_colour(image))


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

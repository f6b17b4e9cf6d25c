"""Scale and stain normalisation: make another lab's image look like the training lab's, before the model.

Both steps are optional parts of a model's :class:`~cellsdk.metadata.Preprocessing` (recorded in its
metadata, so training, calibration, evaluation and every runtime apply them identically), numpy + Pillow only.

**Scale** (``Preprocessing.scale_range``): the training images' typical object size, in raw pixels, as a
range ``(low, high)``. :func:`cell_size` measures an image's object size (the foreground's area over its
outline length, :func:`object_size`, as the guard's magnification check measures it: it doubles when the
magnification doubles) on the region the model's crop keeps. An image whose size falls outside the range is
rescaled to the nearest end of it; one inside is left exactly as it is (the training lab's images do not
change). A caller who knows the pixel size passes it instead (``pixel_size``, µm per pixel), and the image is
rescaled by ``pixel_size / Preprocessing.pixel_size_um``.

**Stain** (``Preprocessing.stain``): Reinhard colour transfer: the prepared image's per-channel mean and
standard deviation in CIE L*a*b* are moved to the training lab's (``{"method": "reinhard", "mean": [...],
"std": [...]}``, fitted by :func:`stain_reference`).

Examples:
    >>> import numpy as np
    >>> from PIL import Image
    >>> image = Image.new("RGB", (64, 64), (230, 220, 225))
    >>> round(cell_size(image, crop=200), 1)
    0.0
    >>> normalise_stain(np.full((4, 4, 3), 200, np.uint8), {"method": "reinhard", "mean": [70, 5, -5],
    ...                                                     "std": [1, 1, 1]}).shape
    (4, 4, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from cellsdk.errors import ConfigError

__all__ = [
    "STAIN_METHODS",
    "border_colour",
    "cell_size",
    "lab_to_rgb",
    "normalise_stain",
    "object_size",
    "rescale_for",
    "rgb_to_lab",
    "scale_factor",
    "stain_reference",
]

STAIN_METHODS = ("reinhard",)

#: object sizes are measured on a copy whose short side is this many pixels (fast, and the same for any input)
_WORK_SIDE = 160
#: rescale factors are kept within this range (a wrong estimate cannot blow an image up or shrink it to nothing)
_FACTOR_LIMITS = (0.25, 4.0)

_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], dtype=np.float32)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ).astype(np.float32)
_WHITE = np.array([0.950456, 1.0, 1.088754], dtype=np.float32)


def _central_region(image: Image.Image, crop: float | None) -> Image.Image:
    """The centre square the model's crop keeps (``crop`` raw pixels), or the whole image."""
    width, height = image.size
    if crop is None or crop >= min(width, height):
        return image
    side = int(crop)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def cell_size(image: Image.Image, *, crop: float | None = None) -> float:
    """The image's typical object size in its own pixels (0 when nothing stands out from the background).

    Measured on the centre square of ``crop`` raw pixels (the region a ``pixels`` crop keeps) or the
    whole image, on a copy whose short side is 160 pixels, then scaled back to the image's pixels.

    Examples:
        >>> from PIL import ImageDraw
        >>> canvas = Image.new("RGB", (200, 200), (235, 225, 230))
        >>> ImageDraw.Draw(canvas).ellipse((60, 60, 140, 140), fill=(120, 60, 160))
        >>> small, large = cell_size(canvas), cell_size(canvas.resize((400, 400)))
        >>> 1.8 < large / small < 2.2
        True
    """
    region = _central_region(image, crop)
    short = min(region.size)
    factor = short / _WORK_SIDE
    if factor > 1:
        region = region.resize((max(1, round(region.width / factor)), max(1, round(region.height / factor))),
                               Image.Resampling.BILINEAR)
    else:
        factor = 1.0
    rgb = np.asarray(region, dtype=np.float32)
    luminance = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)
    return object_size(luminance, float(np.percentile(luminance, 90))) * factor


def object_size(luminance: np.ndarray, background_level: float) -> float:
    """Area of everything darker than the background over the length of its outline, in pixels.

    For discs of diameter ``d`` this is ``πd / 16`` (the outline is counted in pixel edges): it doubles when
    the magnification doubles.

    Examples:
        >>> disc = np.hypot(*np.mgrid[-50:50, -50:50]) < 20
        >>> round(object_size(np.where(disc, 100.0, 200.0), 200.0) / 40, 2)  # diameter 40 px: about π/16
        0.2
    """
    foreground = luminance < 0.9 * background_level
    edges = np.count_nonzero(foreground[1:, :] != foreground[:-1, :]) + np.count_nonzero(
        foreground[:, 1:] != foreground[:, :-1])
    return float(np.count_nonzero(foreground) / max(int(edges), 1))


def scale_factor(image: Image.Image, scale_range: tuple[float, float] | None, *, crop: float | None = None,
                 pixel_size: float | None = None, training_pixel_size: float | None = None) -> float:
    """How much to resize ``image`` so its cells have the training images' size (1.0: leave it).

    With ``pixel_size`` (µm per pixel of this image) and the training images' ``training_pixel_size`` the factor
    is their ratio; otherwise the measured :func:`cell_size` is brought into ``scale_range``.

    Raises:
        ConfigError: ``pixel_size`` given for a model whose training pixel size is unknown, or not positive.

    Examples:
        >>> scale_factor(Image.new("RGB", (50, 50)), None, pixel_size=0.2, training_pixel_size=0.1)
        2.0
        >>> scale_factor(Image.new("RGB", (50, 50), "white"), (10.0, 20.0))
        1.0
    """
    if pixel_size is not None:
        if not (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size) and pixel_size > 0):
            raise ConfigError(f"pixel size {pixel_size!r} is not a positive number of micrometres per pixel")
        if training_pixel_size is None:
            raise ConfigError("this model does not record its training images' pixel size, so --pixel-size cannot "
                              "rescale; leave it out (the model estimates the scale from the cell where it can)")
        factor = pixel_size / training_pixel_size
    elif scale_range is None:
        return 1.0
    else:
        low, high = scale_range
        size = cell_size(image, crop=crop)
        if size <= 0:
            return 1.0  # nothing to measure: leave the image alone (the input checks speak)
        factor = 1.0
        if size < low:
            factor = low / size
        elif size > high:
            factor = high / size
        # the measured size is that of the centre region; re-measure after a large change, the region moved
    return float(min(max(factor, _FACTOR_LIMITS[0]), _FACTOR_LIMITS[1]))


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The image's background colour: the median of its one-pixel border (the fill for padding and corners).

    Examples:
        >>> border_colour(Image.new("RGB", (4, 4), (200, 190, 180)))
        (200, 190, 180)
    """
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))  # type: ignore[return-value]


def rescale_for(image: Image.Image, factor: float, *, crop: float | None = None) -> Image.Image:
    """``image`` resized by ``factor``; if that leaves it smaller than ``crop``, padded to it with its background.

    Examples:
        >>> rescale_for(Image.new("RGB", (100, 80)), 0.5, crop=60).size
        (60, 60)
        >>> rescale_for(Image.new("RGB", (100, 80)), 2.0).size
        (200, 160)
    """
    if factor != 1.0:
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None if factor > 0.5 else 2.0)
    if crop is not None and factor < 1.0 and min(image.size) < crop:
        side = int(crop)
        canvas = Image.new("RGB", (max(side, image.width), max(side, image.height)), border_colour(image))
        canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
        image = canvas
    return image


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """8-bit sRGB (``... x 3``) to CIE L*a*b* (D65), float32.

    Examples:
        >>> rgb_to_lab(np.array([[255, 255, 255]], np.uint8)).round(1).tolist()
        [[100.0, 0.0, 0.0]]
    """
    linear = np.asarray(rgb, dtype=np.float32) / 255.0
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    xyz = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = np.where(xyz[..., 1] > 0.008856, 116.0 * f[..., 1] - 16.0, 903.3 * xyz[..., 1])
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) back to 8-bit sRGB (rounded, clipped).

    Examples:
        >>> lab_to_rgb(rgb_to_lab(np.array([[200, 100, 50]], np.uint8))).tolist()
        [[200, 100, 50]]
    """
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    srgb = np.where(linear > 0.0031308, 1.055 * np.power(linear, 1 / 2.4) - 0.055, 12.92 * linear)
    return np.clip(np.rint(srgb * 255.0), 0, 255).astype(np.uint8)


def _check_stain(stain: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if stain.get("method") not in STAIN_METHODS:
        raise ConfigError(f"stain normalisation {stain.get('method')!r} is unknown: use one of {STAIN_METHODS}")
    mean = np.asarray(stain.get("mean"), dtype=np.float32)
    std = np.asarray(stain.get("std"), dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,) or not np.all(np.isfinite(mean)) or not np.all(std > 0):
        raise ConfigError("stain normalisation needs three finite means and three positive standard deviations")
    return mean, std


def normalise_stain(pixels: np.ndarray, stain: Mapping[str, Any]) -> np.ndarray:
    """Reinhard colour transfer of 8-bit RGB ``pixels`` to the reference in ``stain`` (see :func:`stain_reference`).

    Examples:
        >>> reference = {"method": "reinhard", "mean": [60.0, 10.0, -10.0], "std": [10.0, 5.0, 5.0]}
        >>> out = normalise_stain(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8), reference)
        >>> [round(float(v)) for v in rgb_to_lab(out).reshape(-1, 3).mean(0)]
        [60, 10, -10]
    """
    mean, std = _check_stain(stain)
    lab = rgb_to_lab(pixels)
    flat = lab.reshape(-1, 3)
    own_mean, own_std = flat.mean(axis=0), flat.std(axis=0)
    lab = (lab - own_mean) * (std / np.maximum(own_std, 1e-3)) + mean
    return lab_to_rgb(lab)


def stain_reference(images: Iterable[np.ndarray]) -> dict[str, Any]:
    """The Reinhard reference of a set of prepared 8-bit RGB images: their average L*a*b* mean and spread.

    Examples:
        >>> ref = stain_reference([np.full((4, 4, 3), 128, np.uint8)])
        >>> ref["method"], [round(v) for v in ref["mean"]]
        ('reinhard', [54, 0, 0])
    """
    means, stds = [], []
    for pixels in images:
        flat = rgb_to_lab(pixels).reshape(-1, 3)
        means.append(flat.mean(axis=0))
        stds.append(flat.std(axis=0))
    if not means:
        raise ConfigError("a stain reference needs at least one image")
    std = np.maximum(np.mean(stds, axis=0), 1e-3)
    return {"method": "reinhard", "mean": [round(float(v), 4) for v in np.mean(means, axis=0)],
            "std": [round(float(v), 4) for v in std]}

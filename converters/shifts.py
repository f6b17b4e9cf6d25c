"""Image shifts that make in-distribution cells look like another lab's: the development OOD sets.

Each shift is a deterministic function of a raw RGB image (numpy + Pillow, no
torch). They are used to build the development out-of-distribution sets
(``scripts/make_ood_sets.py``, documented in ``docs/ood_sets.md``) and, at
conversion time, to choose the guard's score and to check that an int8
artefact keeps its quality (:mod:`cellsdk.converters.guard`).

Examples:
    >>> from PIL import Image
    >>> SHIFTS["scale_0.5"](Image.new("RGB", (360, 363))).size
    (180, 182)
    >>> sorted(SHIFTS)[:3]
    ['blur', 'hue_shift', 'jpeg_q5']
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = ["DEV_SHIFTS", "SELECTION_SHIFTS", "SHIFTS", "apply_shift", "shift_names"]


def _hue_shift(image: Image.Image, degrees: float = 40.0) -> Image.Image:
    """Rotate every hue by 40 degrees (another stain's colour)."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def _stain_faded(image: Image.Image) -> Image.Image:
    """Colour saturation x0.4 (weak or faded staining)."""
    return ImageEnhance.Color(image).enhance(0.4)


def _rescale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def shift(image: Image.Image) -> Image.Image:
        width, height = image.size
        return image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BICUBIC)

    shift.__doc__ = f"Resize the whole image x{factor:g} (another magnification)."
    return shift


def _blur(image: Image.Image) -> Image.Image:
    """Gaussian blur of radius 3 px at the original resolution (out of focus)."""
    return image.filter(ImageFilter.GaussianBlur(radius=3))


def _jpeg(image: Image.Image, quality: int = 5) -> Image.Image:
    """Re-encode as JPEG at quality 5 (heavy compression blocks)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _exposure(factor: float) -> Callable[[Image.Image], Image.Image]:
    def shift(image: Image.Image) -> Image.Image:
        array = np.asarray(image, dtype=np.float32) * factor
        return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="RGB")

    shift.__doc__ = f"Scale every pixel x{factor:g} ({'over' if factor > 1 else 'under'}-exposure)."
    return shift


def _no_crop(image: Image.Image, side: int = 200) -> Image.Image:
    """The whole field of view squeezed to 200 px, so the model's 200 px crop sees all of it (not a single-cell crop)."""
    return image.resize((side, side), Image.Resampling.BICUBIC)


def _zoom_2(image: Image.Image) -> Image.Image:
    """The central half of the image enlarged to the full size (x2 magnification, also on pre-cropped images)."""
    width, height = image.size
    box = (width // 4, height // 4, width // 4 + max(1, width // 2), height // 4 + max(1, height // 2))
    return image.crop(box).resize((width, height), Image.Resampling.BICUBIC)


#: The named shifts of a raw microscope image, in the order the reports list them.
SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "hue_shift": _hue_shift,
    "stain_faded": _stain_faded,
    "scale_0.5": _rescale(0.5),
    "scale_2": _rescale(2.0),
    "blur": _blur,
    "jpeg_q5": _jpeg,
    "overexposed": _exposure(1.7),
    "underexposed": _exposure(0.45),
    "no_crop": _no_crop,
    "zoom_2": _zoom_2,
}

#: The development OOD sets made from raw originals (``scripts/make_ood_sets.py``).
DEV_SHIFTS = ("hue_shift", "stain_faded", "scale_0.5", "scale_2", "blur", "jpeg_q5", "overexposed", "underexposed",
              "no_crop")
#: The shifts the converter uses to choose and check the guard: meaningful on raw and on pre-cropped images alike.
SELECTION_SHIFTS = ("hue_shift", "stain_faded", "zoom_2", "blur", "jpeg_q5", "overexposed", "underexposed")


def shift_names() -> tuple[str, ...]:
    """The shift names, in report order.

    Examples:
        >>> "blur" in shift_names()
        True
    """
    return tuple(SHIFTS)


def apply_shift(name: str, image: Image.Image) -> Image.Image:
    """Apply the shift ``name`` to an RGB image.

    Raises:
        KeyError: an unknown shift, naming the known ones.

    Examples:
        >>> from PIL import Image
        >>> apply_shift("blur", Image.new("RGB", (32, 32), (200, 100, 150))).size
        (32, 32)
    """
    if name not in SHIFTS:
        raise KeyError(f"unknown shift {name!r}: use one of {', '.join(SHIFTS)}")
    return SHIFTS[name](image.convert("RGB"))

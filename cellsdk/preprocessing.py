"""Image decoding and preprocessing, in numpy + Pillow only.

One path turns any supported input into the model's input tensor, and the
same functions are used by training, calibration, evaluation and the runtime,
so all of them see identical tensors:

1. :func:`load_image` decodes a path, bytes, PIL image or numpy array into an
   8-bit RGB PIL image (EXIF orientation applied, any mode converted, alpha
   composited on white, 16-bit scaled to 8-bit). Bad input raises
   :class:`~cellsdk.errors.InvalidImageError` naming the input.
2. :func:`prepare_image` applies the model's scale step (if any), the centre crop, the resize and its
   stain normalisation (if any).
3. :func:`to_input_array` scales, normalises and lays the pixels out as
   float32 CHW.

:func:`preprocess` does all three.

Examples:
    >>> import numpy as np
    >>> from cellsdk.metadata import Preprocessing
    >>> x = preprocess(np.zeros((40, 30, 3), np.uint8), Preprocessing(input_size=16))
    >>> x.shape, x.dtype, float(x.min())
    ((3, 16, 16), dtype('float32'), -1.0)
"""

from __future__ import annotations

import errno
import functools
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from cellsdk.errors import InvalidImageError
from cellsdk.metadata import Preprocessing
from cellsdk.normalise import normalise_stain, rescale_for, scale_factor

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageSource",
    "crop_box",
    "describe_source",
    "load_image",
    "prepare_image",
    "preprocess",
    "preprocess_batch",
    "to_input_array",
]

#: the image files a folder is read for (datasets, batch jobs)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

#: Images with more pixels than this are refused as decompression bombs.
MAX_IMAGE_PIXELS = 64_000_000

#: Anything :func:`load_image` accepts.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]  # noqa: UP007 - a runtime alias

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_ORIENTATION = 0x0112  # the EXIF orientation tag
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def describe_source(source: Any, name: str | None = None) -> str:
    """A short name for an image source, used in error messages.

    Examples:
        >>> describe_source(b"abc")
        '<3 bytes>'
    """
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {tuple(source.shape)}>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return filename or f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{type(source).__name__}>"


def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode any supported input into an 8-bit RGB PIL image.

    Args:
        source: a file path, encoded bytes, a PIL image, or a numpy array under this contract:
            layout H x W (grayscale) or H x W x 1 / 3 (RGB) / 4 (RGBA, composited on white), channels
            last (a channel-first 3 x H x W array is refused, not transposed); dtype uint8 (0-255),
            uint16 (0-65535, scaled by the full 16-bit range), bool (0 / 255), any other integer type
            holding 0-255 (read as 8-bit), or float holding 0-1. Anything else (floats outside 0-1 such
            as already-normalised tensors, integers above 255 in a type other than uint16, negative
            values, NaN) is refused with the conversion to make, never guessed.
        name: how to call the input in error messages (default: derived).

    Returns:
        The image as mode ``"RGB"``, EXIF orientation applied.

    Raises:
        InvalidImageError: the input is missing, empty, corrupt, truncated,
            of an unsupported shape or mode, or larger than
            :data:`MAX_IMAGE_PIXELS`.

    Examples:
        >>> load_image(np.full((4, 5), 7, np.uint8)).mode
        'RGB'
    """
    label = describe_source(source, name)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, label)
    if isinstance(source, Image.Image):
        return _to_rgb(source, label)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidImageError(f"{label}: empty input, no image data")
        return _decode(io.BytesIO(bytes(source)), label)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InvalidImageError(_missing(path, label))
        if path.is_dir():
            raise InvalidImageError(f"{label}: is a directory, not an image file")
        if path.stat().st_size == 0:
            raise InvalidImageError(f"{label}: empty file (0 bytes), not an image")
        try:
            with open(path, "rb") as stream:  # the header is checked before any pixel data is read
                return _decode(stream, label)
        except OSError as err:
            raise InvalidImageError(f"{label}: cannot be read ({err.strerror or err})") from None
    raise InvalidImageError(
        f"{label}: unsupported input type; pass a path, bytes, a PIL image or a numpy array"
    )


def _missing(path: Path, label: str) -> str:
    """Why a path names no file: missing, a symlink to nothing, or a symlink loop."""
    if not path.is_symlink():
        return f"{label}: no such file"
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{label}: a loop of symbolic links (it leads back to itself); remove or fix the link"
    return f"{label}: a symbolic link to {os.readlink(path)!r}, which does not exist; fix or remove the link"


def _decode(stream: IO[bytes], label: str) -> Image.Image:
    """Open, bomb-check and fully decode an encoded image."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # another library flipped the global; we never accept half images
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # malformed-metadata chatter
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_size(image.size, label)
            image.load()
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not a recognised image file (corrupt or wrong format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageError(
            f"{label}: image is too large (decompression bomb guard, limit {MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason.lower():
            reason = "file is truncated"
        raise InvalidImageError(f"{label}: cannot decode image ({reason})") from None
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise any type on malformed files (found by fuzzing)
        raise InvalidImageError(f"{label}: cannot decode image (malformed file: {type(err).__name__})") from None
    return _to_rgb(image, label)


def _check_size(size: tuple[int, int], label: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{label}: image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidImageError(
            f"{label}: image is too large ({width}x{height} = {width * height:,} pixels, "
            f"limit {MAX_IMAGE_PIXELS:,}); downscale it before classifying"
        )


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB."""
    _check_size(image.size, label)
    try:
        if image.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when nothing turns
            from PIL import ImageOps  # imported for a turned image only: it is 5 ms of every cold start

            image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not lose the image itself  # noqa: BLE001
        pass
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        return _convert_mode(image, mode, label)
    except (ValueError, OSError) as err:  # e.g. Pillow cannot convert premultiplied "La" to RGBA
        raise InvalidImageError(f"{label}: unsupported image mode {mode!r} ({err})") from None


def _convert_mode(image: Image.Image, mode: str, label: str) -> Image.Image:
    """Any non-RGB mode to RGB: alpha composited on white, 16/32-bit scaled, the rest through Pillow."""
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _WIDE_MODES:
        return _array_to_rgb(np.asarray(image), label, wide_integers=True, file_mode=mode)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise InvalidImageError(f"{label}: unsupported image mode {mode!r} ({err})") from None


def _array_to_rgb(array: np.ndarray, label: str, *, wide_integers: bool = False, file_mode: str | None = None
                  ) -> Image.Image:
    """Convert a numpy image to RGB under the array contract (see :func:`load_image`).

    ``wide_integers``: the array comes from a PIL 16/32-bit integer mode, so integers are 16-bit data.
    ``file_mode``: the array is an image file's pixels in this PIL mode (advice then names the file, not code).
    """
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise InvalidImageError(f"{label}: unsupported array dtype {getattr(array, 'dtype', type(array).__name__)}; "
                                "pass uint8 (0-255), uint16 (0-65535), bool or float (0-1) pixels")
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise InvalidImageError(
            f"{label}: array of shape {tuple(array.shape)} is ambiguous: its channels could come first "
            f"({array.shape[0]} x H x W) or last (H x W x {array.shape[-1]}); pass np.moveaxis(array, 0, -1) if "
            "they come first, or PIL.Image.fromarray(array) if it really is an image "
            f"{array.shape[0]} pixel{'s' if array.shape[0] != 1 else ''} tall"
        )
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise InvalidImageError(
            f"{label}: array of shape {tuple(array.shape)} looks channel-first; cellsdk takes H x W x C "
            "(channels last): pass np.moveaxis(array, 0, -1)"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImageError(
            f"{label}: unsupported array shape {tuple(array.shape)}; expected H x W, or H x W x 1, 3 or 4 "
            "(channels last)"
        )
    if array.size == 0:
        raise InvalidImageError(f"{label}: image has no pixels (shape {tuple(array.shape)})")
    _check_size((array.shape[1], array.shape[0]), label)
    array = _to_uint8(array, label, wide_integers=wide_integers, file_mode=file_mode)
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[-1] == 4:
        return _to_rgb(Image.fromarray(array, mode="RGBA"), label)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _to_uint8(array: np.ndarray, label: str, *, wide_integers: bool = False, file_mode: str | None = None
              ) -> np.ndarray:
    """8-bit pixels under the array contract; anything ambiguous is refused, never guessed.

    uint8 as is; bool as 0 / 255; uint16 (and PIL's 16/32-bit integer modes) by the full 16-bit range; other
    integer dtypes must hold 0-255 (e.g. ``np.asarray(img).astype(int)``); floats must hold 0-1.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InvalidImageError(f"{label}: image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if file_mode is not None and low >= 0.0 and high > 1.0:
            # a 32-bit float file (ImageJ writes 0-255 or 0-65535 floats): read it by its range, as ImageJ does
            for full in (255.0, 65535.0):
                if high <= full:
                    return np.rint(array.astype(np.float64) * (255.0 / full)).astype(np.uint8)
        if low < 0.0 or high > 1.0:
            if file_mode is not None:
                raise InvalidImageError(
                    f"{label}: a 32-bit floating-point image file with values {low:.4g} to {high:.4g}, outside "
                    "the 0-1, 0-255 and 0-65535 ranges cellsdk reads; save it as an 8-bit or 16-bit image (e.g. "
                    "ImageJ / Fiji: Image > Type > 8-bit, then File > Save As > Tiff)")
            hint = ("it looks normalised already (negative values); pass the image before normalising"
                    if low < 0.0 else "for 0-255 values pass array.astype(np.uint8), or divide by 255")
            raise InvalidImageError(f"{label}: float pixels must lie in 0-1, found {low:.4g} to {high:.4g}; {hint}")
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise InvalidImageError(f"{label}: image has negative pixel values ({low}); pass uint8 or uint16 pixels")
    if array.dtype == np.uint16 or wide_integers:
        if high > 65535:
            raise InvalidImageError(f"{label}: pixel values up to {high} do not fit 16 bits; scale to uint16 or uint8")
        return (array.astype(np.uint32) // 257).astype(np.uint8)  # the full 16-bit range onto 8 bits
    if high > 255:
        raise InvalidImageError(
            f"{label}: {array.dtype} pixels up to {high}: integer arrays other than uint16 are read as 8-bit "
            "(0-255); pass 16-bit data as uint16, or scale it to uint8"
        )
    return array.astype(np.uint8)


def crop_box(size: tuple[int, int], spec: Preprocessing) -> tuple[int, int, int, int]:
    """The region ``(left, top, right, bottom)`` of a ``(width, height)`` image that :func:`prepare_image` keeps
    (and resizes to the model input): the centre square of the crop, or the whole image without one.

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> crop_box((363, 360), Preprocessing(input_size=128, crop_mode="pixels", crop_value=200))
        (81, 80, 281, 280)
    """
    width, height = size
    side = None
    if spec.crop_mode == "pixels":
        side = min(int(spec.crop_value), width, height)
    elif spec.crop_mode == "fraction" and spec.crop_value < 1.0:
        side = max(1, round(min(width, height) * spec.crop_value))
    if side is None or (side, side) == (width, height):
        return 0, 0, width, height
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _pixel_crop(spec: Preprocessing) -> float | None:
    return spec.crop_value if spec.crop_mode == "pixels" else None


def prepare_image(image: Image.Image, spec: Preprocessing, *, pixel_size: float | None = None) -> Image.Image:
    """Rescale (where the model says so), centre-crop, resize and stain-normalise an RGB image for the model.

    With ``spec.scale_range`` (or a ``pixel_size`` in µm per pixel), the image is first rescaled so its cells
    have the training images' size (:func:`cellsdk.normalise.scale_factor`); with ``spec.stain`` the prepared
    image's colours are moved to the training lab's (:func:`cellsdk.normalise.normalise_stain`).

    The crop is a centre square: ``left = (w - c) // 2``, ``top = (h - c) // 2``
    where ``c`` is ``crop_value`` pixels (``"pixels"``, clipped to the short
    side) or ``round(crop_value * short side)`` (``"fraction"``). Without a
    crop the whole image is resized to a square.

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> spec = Preprocessing(input_size=8, crop_mode="pixels", crop_value=20)
        >>> prepare_image(Image.new("RGB", (36, 30)), spec).size
        (8, 8)
    """
    if spec.scale_range is not None or pixel_size is not None:
        factor = scale_factor(image, spec.scale_range, crop=_pixel_crop(spec), pixel_size=pixel_size,
                              training_pixel_size=spec.pixel_size_um)
        image = rescale_for(image, factor, crop=_pixel_crop(spec))
    box = crop_box(image.size, spec)
    if box != (0, 0, *image.size):
        image = image.crop(box)
    size = (spec.input_size, spec.input_size)
    if image.size != size:
        image = image.resize(size, resample=_FILTERS[spec.resize_filter])
    if spec.stain is not None:
        image = Image.fromarray(normalise_stain(np.asarray(image), spec.stain))
    return image


def to_input_array(image: Image.Image | np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Scale to [0, 1], normalise and lay out a prepared RGB image (or its ``H x W x 3`` uint8 pixels) as float32 CHW.

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> spec = Preprocessing(input_size=2, mean=(0, 0, 0), std=(1, 1, 1))
        >>> to_input_array(Image.new("RGB", (2, 2), (255, 0, 0)), spec)[:, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    channels = np.asarray(image).transpose(2, 0, 1)  # uint8 CHW view, no copy
    scale, offset = _normaliser(spec.mean, spec.std)
    if spec.color_order == "BGR":
        channels, scale, offset = channels[::-1], scale[::-1], offset[::-1]
    out = np.empty(channels.shape, dtype=np.float32)
    np.multiply(channels, scale, out=out)  # one pass from uint8 into the float32 CHW result
    out += offset
    return out


@functools.lru_cache(maxsize=32)
def _normaliser(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``x * scale + offset`` equal to ``(x / 255 - mean) / std``, shaped for CHW."""
    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(3, 1, 1)
    offset = np.asarray([-m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(3, 1, 1)
    scale.flags.writeable = offset.flags.writeable = False
    return scale, offset


def preprocess(source: ImageSource, spec: Preprocessing, *, name: str | None = None) -> np.ndarray:
    """Decode, crop, resize and normalise one image into a float32 CHW array.

    Args:
        source: anything :func:`load_image` accepts.
        spec: the model's preprocessing recipe.
        name: how to call the input in error messages.

    Raises:
        InvalidImageError: the input cannot be turned into an image.

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> preprocess(np.zeros((5, 5), np.uint8), Preprocessing(input_size=4)).shape
        (3, 4, 4)
    """
    return to_input_array(prepare_image(load_image(source, name=name), spec), spec)


def preprocess_batch(sources: Iterable[ImageSource], spec: Preprocessing) -> np.ndarray:
    """Preprocess several images into one float32 NCHW batch.

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> preprocess_batch([np.zeros((5, 5), np.uint8)] * 2, Preprocessing(input_size=4)).shape
        (2, 3, 4, 4)
    """
    arrays = [preprocess(source, spec) for source in sources]
    if not arrays:
        return np.zeros((0, 3, spec.input_size, spec.input_size), dtype=np.float32)
    return np.stack(arrays)

"""What a request's bytes are: sniffed image formats, pixel limits, names that are only ever echoed.

The server never trusts a file name, an extension or a ``Content-Type`` to say what an upload is: the first
bytes do. A name is cleaned for the JSON answer and goes nowhere else (never a path).

Examples:
    >>> sniff(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff(b"%PDF-1.7"), sniff(b"")
    ('PNG', None, None)
    >>> display_name("../../etc/passwd"), display_name(None)
    ('passwd', None)
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from PIL import Image

from cellsdk.errors import InvalidImageError
from cellsdk.preprocessing import load_image
from cellsdk.serve.problems import ApiError

__all__ = ["ACCEPTED_FORMATS", "check_and_decode", "display_name", "sniff"]

#: Formats accepted, by their signature (the first bytes), as Pillow names them.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
_UNSAFE = re.compile(r"[^\w.\- ()+,]")


def sniff(data: bytes) -> str | None:
    """The image format ``data`` starts with (one of :data:`ACCEPTED_FORMATS`), or None.

    Examples:
        >>> sniff(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff(b"hello")
        ('PNG', None)
    """
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def display_name(name: str | None) -> str | None:
    """A client's file name reduced to a short, printable base name for the answer (never used as a path).

    Examples:
        >>> display_name("../../etc/cell 1.png")
        'cell 1.png'
    """
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base)[:120].strip()
    return cleaned or None


def _label(index: int, name: str | None) -> str:
    return f"image {index + 1}" + (f" ({name})" if name else "")


def check_and_decode(data: bytes, *, index: int, name: str | None, max_pixels: int) -> Image.Image:
    """Decode one upload into an RGB image, or raise the :class:`ApiError` that says what is wrong with it.

    Args:
        data: the upload's bytes.
        index: its position in the request (0-based), for the message.
        name: its cleaned name, or None.
        max_pixels: the most pixels allowed (checked from the header, before any pixel is decoded).

    Raises:
        ApiError: ``bad-image`` (empty, corrupt, truncated), ``not-an-image`` (not an accepted format, whatever
            its name or content type says), ``image-too-large`` (more than ``max_pixels``).

    Examples:
        >>> data = open("samples/pbc_raw/ig/MMY_163947.jpg", "rb").read()
        >>> check_and_decode(data, index=0, name="cell.jpg", max_pixels=10**6).size
        (360, 363)
        >>> check_and_decode(b"hello", index=0, name="notes.txt", max_pixels=10**6)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.serve.problems.ApiError: ...
    """
    label = _label(index, name)
    where: dict[str, Any] = {"index": index, **({"name": name} if name else {})}
    if not data:
        raise ApiError("bad-image", f"{label}: empty upload, no image data", **where)
    kind = sniff(data)
    if kind is None:
        raise ApiError("not-an-image", f"{label}: not an image (accepted: {', '.join(ACCEPTED_FORMATS)}; the content "
                                       "is checked, not the name or the Content-Type)", **where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: our limit is checked just below
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError:  # over twice Pillow's own limit: refused from the header alone
        raise ApiError("image-too-large", f"{label}: image is too large (decompression bomb guard, limit "
                                          f"{max_pixels:,} pixels); downscale it before sending", **where) from None
    except Exception:  # noqa: BLE001 - the full decode below names the problem
        width = height = 0
    if width * height > max_pixels:
        raise ApiError("image-too-large", f"{label}: {width} x {height} = {width * height:,} pixels, more than this "
                                          f"service's limit of {max_pixels:,}; downscale it before sending", **where)
    try:
        return load_image(data, name=label)
    except InvalidImageError as err:
        kind_ = "image-too-large" if "too large" in str(err) else "bad-image"
        raise ApiError(kind_, str(err), **where) from None

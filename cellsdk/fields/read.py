"""Fields as instruments write them: every page of a file, each decoded as :func:`cellsdk.preprocessing.load_image`
decodes a single image (8/16-bit RGB or grey, 32-bit float read by its range, EXIF orientation applied).

A multi-page TIFF is one field per page (``name`` is ``file.tif#2`` for the third page); anything that is not an
image is one :class:`~cellsdk.errors.InvalidImageError` line naming the file, never a traceback.

Examples:
    >>> [(field.name, field.image.size) for field in read_fields("samples/pbc_raw/ig/MMY_163947.jpg")]
    [('samples/pbc_raw/ig/MMY_163947.jpg', (360, 363))]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from cellsdk.errors import InvalidImageError
from cellsdk.preprocessing import MAX_IMAGE_PIXELS, load_image

__all__ = ["MAX_PAGES", "FieldImage", "read_fields"]

#: pages read from one multi-page file at most (a stack larger than this is refused, not read half)
MAX_PAGES = 1000


@dataclass(frozen=True)
class FieldImage:
    """One field of view: where it came from and its 8-bit RGB pixels.

    Attributes:
        name: the file's path as given, ``#N`` appended for page N (from 0) of a multi-page file after the first.
        page: the page within the file (0 for a single-page file).
        image: the field, mode ``RGB``.
    """

    name: str
    page: int
    image: Image.Image


def _pages(path: Path, label: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(path) as opened:
                return int(getattr(opened, "n_frames", 1))
    except UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not a recognised image file (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InvalidImageError(f"{label}: cannot decode image ({err or type(err).__name__})") from None


def read_fields(source: str | os.PathLike) -> Iterator[FieldImage]:
    """The fields in one image file: one per page, lazily.

    Raises:
        InvalidImageError: the file is missing, not an image, corrupt, or one of its pages cannot be decoded.

    Examples:
        >>> next(read_fields("samples/pbc_raw/ig/MMY_163947.jpg")).page
        0
    """
    path = Path(source)
    label = str(source)
    first = load_image(path, name=label)  # every check of a single image, on the first page
    pages = _pages(path, label) if path.suffix.lower() in (".tif", ".tiff", ".gif", ".webp") else 1
    if pages > MAX_PAGES:
        raise InvalidImageError(f"{label}: {pages} pages, more than the {MAX_PAGES} cellsdk reads from one file; "
                                "split the stack (ImageJ / Fiji: Image > Stacks > Stack to Images)")
    yield FieldImage(label, 0, first)
    if pages == 1:
        return
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as stack:
        for page in range(1, pages):
            name = f"{label}#{page}"
            try:
                stack.seek(page)
                width, height = stack.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InvalidImageError(f"{name}: page is too large ({width}x{height})")
                frame = stack.copy()
            except InvalidImageError:
                raise
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise InvalidImageError(f"{name}: cannot decode this page ({err or type(err).__name__})") from None
            yield FieldImage(name, page, load_image(frame, name=name))

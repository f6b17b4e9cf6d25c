"""The lab's unlabelled pool: cells it ran through ``cellsdk predict --collect DIR`` or ``cellsdk serve --collect DIR
--keep-asked``, kept so ``cellsdk adapt --unlabelled DIR`` can learn from them.

Each readable image is saved once, bytes unchanged, as ``DIR/unlabelled/<sha256[:16]><ext>`` (written atomically;
the same cell asked about twice is kept once). ``DIR`` is the same folder the review page saves labelled cells to
(``DIR/<label>/``), so one folder holds a lab's labelled and unlabelled cells: ``cellsdk adapt CKPT DIR
--unlabelled DIR`` takes both (a reviewed cell is left out of the unlabelled pool by its bytes).

Examples:
    >>> import tempfile
    >>> pool = CellPool(tempfile.mkdtemp())
    >>> pool.keep(open("samples/pbc_raw/ig/MMY_163947.jpg", "rb").read()).suffix
    '.jpg'
    >>> pool.keep(b"not an image") is None, len(pool)
    (True, 1)
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cellsdk._io import make_writable_folder
from cellsdk.datasets import UNLABELLED
from cellsdk.errors import ConfigError

__all__ = ["SUFFIX_BY_FORMAT", "UNLABELLED", "CellPool", "cell_file_name", "require_writable"]

#: the file suffix an image is saved under, by the format Pillow reads in it
SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}


def require_writable(folder: Path, root: Path) -> None:
    """Create ``folder`` (inside the collect folder ``root``) and check a file can be written there.

    Raises:
        ConfigError: it cannot, in one line naming the fix.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> require_writable(root / "unlabelled", root)
    """
    try:
        make_writable_folder(folder)
    except OSError as err:
        raise ConfigError(f"{root}: the collect folder is not writable ({err.strerror or err}); choose "
                          "another --collect") from None


def cell_file_name(data: bytes, kind: str) -> str:
    """The name a collected image is saved under: the first 16 hex digits of its sha256, and its format's suffix.

    Examples:
        >>> cell_file_name(b"abc", "JPEG")
        'ba7816bf8f01cfea.jpg'
    """
    return hashlib.sha256(data).hexdigest()[:16] + SUFFIX_BY_FORMAT.get(kind, ".png")


class CellPool:
    """``root/unlabelled/``: where asked-about cells are kept.

    Raises:
        ConfigError: the folder cannot be created or written.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.folder = self.root / UNLABELLED
        self._lock = threading.Lock()
        require_writable(self.folder, self.root)

    def keep(self, image: bytes | str | os.PathLike) -> Path | None:
        """Keep one image (its bytes, or a file); None when it is not an image Pillow can open (nothing written).

        Raises:
            ConfigError: the folder stopped being writable.

        Examples:
            >>> import tempfile
            >>> CellPool(tempfile.mkdtemp()).keep("samples/pbc_raw/ig/MMY_163947.jpg").name
            '0e873916c2dfba57.jpg'
        """
        from PIL import Image, UnidentifiedImageError

        try:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            with Image.open(io.BytesIO(data)) as opened:
                kind = opened.format or "PNG"
        except (OSError, UnidentifiedImageError, ValueError):
            return None
        target = self.folder / cell_file_name(data, kind)
        with self._lock:
            if target.exists():
                return target
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)  # emptied by hand since: made again
                tmp.write_bytes(data)
                os.replace(tmp, target)
            except OSError as err:
                raise ConfigError(f"{self.folder}: cannot keep the cell ({err.strerror or err}); free space or "
                                  "choose another --collect") from None
        return target

    def keeping(self, inputs: Iterable[Any]) -> Iterator[Any]:
        """``inputs`` unchanged, each image file among them kept on the way (other items pass untouched).

        Examples:
            >>> import tempfile
            >>> pool = CellPool(tempfile.mkdtemp())
            >>> list(pool.keeping(["samples/pbc_raw/ig/MMY_163947.jpg"])), len(pool)
            (['samples/pbc_raw/ig/MMY_163947.jpg'], 1)
        """
        for item in inputs:
            if isinstance(item, (str, os.PathLike)) and Path(item).is_file():
                self.keep(item)
            yield item

    def cells(self) -> list[Path]:
        """The kept cells, sorted (none when the folder was removed since).

        Examples:
            >>> import tempfile
            >>> CellPool(tempfile.mkdtemp()).cells()
            []
        """
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.cells())

"""A cache of fp32 ONNX exports: converting the same weights again skips ``torch.onnx.export``.

The export (``torch.export`` and its decompositions) is the slowest step of most conversions — about a minute
for EfficientNet-Lite0 on 2 cores — and the same for every re-conversion of a checkpoint (other precisions, other
formats, another calibration set). Exports are kept in ``$CELLSDK_EXPORT_CACHE`` (default
``$CELLSDK_CACHE/onnx-export``, i.e. ``~/.cache/cellsdk/onnx-export``; ``CELLSDK_EXPORT_CACHE=0`` turns the cache
off), the newest :data:`MAX_ENTRIES`, each under a key of everything the export depends on: every weight and
buffer of the exported module (names, dtypes, shapes, values), its structure, its outputs, the batch dimension,
the input size, the versions of torch, onnx and cellsdk, and the source of the modules that build the exported
graph. A hit is copied into the conversion's work folder, so nothing downstream can change the cached file; a
cache that cannot be read or written is passed over, never an error.

Examples:
    >>> from unittest import mock
    >>> with mock.patch.dict("os.environ", {"CELLSDK_EXPORT_CACHE": "0"}):
    ...     cache_folder() is None
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cellsdk._io import user_cache_dir
from cellsdk._version import __version__

__all__ = ["MAX_ENTRIES", "cache_folder", "export_key", "fetch", "store"]

log = logging.getLogger("cellsdk")

#: exports kept (the least recently used go first)
MAX_ENTRIES = 8
#: the modules whose code shapes the exported graph (a change in them must not reuse an old export)
_SOURCES = ("onnx.py", "heads.py", "export_cache.py")


def cache_folder() -> Path | None:
    """Where exports are cached, or None when ``CELLSDK_EXPORT_CACHE=0``.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"CELLSDK_EXPORT_CACHE": "/tmp/exports"}):
        ...     cache_folder().as_posix()
        '/tmp/exports'
    """
    setting = os.environ.get("CELLSDK_EXPORT_CACHE", "")
    if setting.strip().lower() in ("0", "off", "false", "no"):
        return None
    return Path(setting) if setting else user_cache_dir() / "onnx-export"


def export_key(module: Any, outputs: tuple[str, ...], *, dynamic_batch: bool, input_size: int) -> str:
    """The cache key of an export of ``module`` (see the module's docstring for what goes into it).

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> export_key(layer, ("logits",), dynamic_batch=True, input_size=8) == export_key(
        ...     layer, ("logits",), dynamic_batch=False, input_size=8)
        False
    """
    import onnx
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update((value.float() if value.dtype == torch.bfloat16 else value).numpy().tobytes())
    digest.update(repr(module).encode())
    here = Path(__file__).resolve().parent
    for source in _SOURCES:
        with contextlib.suppress(OSError):
            digest.update((here / source).read_bytes())
    digest.update(json.dumps([list(outputs), dynamic_batch, input_size, torch.__version__, onnx.__version__,
                              __version__]).encode())
    return digest.hexdigest()[:40]


def fetch(key: str, target: Path) -> bool:
    """Copy the cached export ``key`` to ``target``; False when there is none (or the cache is off / unreadable).

    Examples:
        >>> fetch("no-such-key", Path("/tmp/fp32.onnx"))
        False
    """
    folder = cache_folder()
    if folder is None:
        return False
    cached = folder / f"{key}.onnx"
    try:
        shutil.copyfile(cached, target)
        os.utime(cached)  # recently used: kept longest
    except OSError:
        return False
    log.info("cellsdk: fp32 ONNX export reused from %s", cached)
    return True


def store(key: str, exported: Path) -> None:
    """Keep a copy of ``exported`` under ``key`` (atomically), then drop the oldest beyond :data:`MAX_ENTRIES`.

    Examples:
        >>> store("k", Path("/no/such/export.onnx"))  # a cache that cannot be written is passed over
    """
    folder = cache_folder()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, staged = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".part")
        os.close(handle)
        try:
            shutil.copyfile(exported, staged)
            os.replace(staged, folder / f"{key}.onnx")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[MAX_ENTRIES:]:
            with contextlib.suppress(OSError):
                old.unlink()
    except OSError as err:
        log.debug("cellsdk: export cache not written (%s)", err)

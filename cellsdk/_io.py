"""Small file helpers: atomic writes and hashing.

Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> write_json(path, {"x": 1}) and open(path).read().strip()
    '{\\n  "x": 1\\n}'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "WRITE_PROBE",
    "artefact_files",
    "atomic_path",
    "current_umask",
    "make_writable_folder",
    "on_terminate",
    "parse_json",
    "pending_cleanups",
    "remove_on_terminate",
    "remove_registered",
    "sha256_file",
    "user_cache_dir",
    "write_json",
    "write_text",
]

#: the empty file :func:`make_writable_folder` writes and removes to learn that a folder takes files
WRITE_PROBE = ".write-test"

#: deeper JSON than this is refused (cellsdk writes at most ~6 levels; a hostile file could exhaust the stack)
MAX_JSON_DEPTH = 64


#: what to clean up when the process is terminated mid-work: staging paths to delete, child processes to kill
_ON_TERMINATE: list[Path | Callable[[], object]] = []


@contextlib.contextmanager
def _registered(entry: Path | Callable[[], object]) -> Iterator[None]:
    _ON_TERMINATE.append(entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _ON_TERMINATE.remove(entry)


@contextlib.contextmanager
def remove_on_terminate(path: str | os.PathLike) -> Iterator[Path]:
    """Register ``path`` (a staging folder) for :func:`remove_registered` while the block runs.

    Work that spends its time inside native libraries (torch's exporters, quantizers, OpenVINO) must not be
    unwound by an exception raised from a signal handler: an interrupted exporter can crash the process
    (SIGSEGV) on its way out, and a library that calls back into Python can turn the interrupt into an
    ordinary error. The CLI's SIGTERM handler instead removes the registered paths and exits at once.
    """
    registered = Path(path)
    with _registered(registered):
        yield registered


@contextlib.contextmanager
def on_terminate(cleanup: Callable[[], object]) -> Iterator[None]:
    """Register ``cleanup`` (e.g. a child process's ``kill``) for :func:`remove_registered` while the block runs."""
    with _registered(cleanup):
        yield


def make_writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents) and check that a file can be written in it; the caller turns the OSError
    into its own one-line message.

    Raises:
        OSError: the folder cannot be made or written.

    Examples:
        >>> import tempfile
        >>> make_writable_folder(Path(tempfile.mkdtemp()) / "a" / "b")
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / WRITE_PROBE
    probe.write_text("")
    probe.unlink()


def user_cache_dir() -> Path:
    """cellsdk's per-user cache: ``$CELLSDK_CACHE``, default ``~/.cache/cellsdk`` (self-check verdicts, TensorRT
    engines).

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"CELLSDK_CACHE": "/tmp/cache"}):
        ...     user_cache_dir().as_posix()
        '/tmp/cache'
    """
    return Path(os.environ.get("CELLSDK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cellsdk"))


def pending_cleanups() -> int:
    """How many cleanups (staging paths, child processes) are registered right now.

    Examples:
        >>> with on_terminate(lambda: None):
        ...     pending_cleanups()
        1
    """
    return len(_ON_TERMINATE)


def remove_registered() -> int:
    """Run every registered cleanup, newest first: kill child processes, delete staging paths. Returns the count."""
    import shutil

    entries = list(reversed(_ON_TERMINATE))
    for entry in entries:
        if not isinstance(entry, Path):
            with contextlib.suppress(Exception):
                entry()
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return len(entries)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    If the body raises, the temporary file is removed and ``target`` is left
    as it was, so a file appears complete or not at all.
    """
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes 0600 files; give the result the mode a plain open() would
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def artefact_files(path: str | os.PathLike) -> list[Path]:
    """Every file a model artefact consists of: a package folder's tree, an OpenVINO ``.xml`` with its ``.bin``,
    or the one file.

    Examples:
        >>> [p.name for p in artefact_files("model.xml")]
        ['model.xml', 'model.bin']
    """
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON (indented, UTF-8) atomically and return the path."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file.

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "empty")
        >>> open(path, "wb").close()
        >>> sha256_file(path)[:16]
        'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def combined_sha256(named: Sequence[tuple[str, str]]) -> str:
    """One sha256 for an artefact: its file's own for one file; for several (an IR, a package), the sha256 of their
    names (relative to the artefact's folder) and sha256s, in order — what manifests record.

    Examples:
        >>> combined_sha256([("model.onnx", "ab" * 32)]) == "ab" * 32
        True
    """
    if len(named) == 1:
        return named[0][1]
    return hashlib.sha256("".join(name + sha for name, sha in named).encode()).hexdigest()


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses absurdly deep nesting with a ``ValueError`` instead of a ``RecursionError``.

    Examples:
        >>> parse_json('{"a": [1, 2]}')
        {'a': [1, 2]}
        >>> parse_json("[" * 100 + "]" * 100)
        Traceback (most recent call last):
        ...
        ValueError: JSON nested deeper than 64 levels
    """
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    stack = [(data, 1)]
    while stack:  # iterative: a deep document cannot exhaust the stack here either
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return data

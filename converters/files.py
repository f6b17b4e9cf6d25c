"""The conversion's files: a staging folder beside the output that is moved into place whole, and each artefact's
size and hashes.

Everything is built in a staging folder beside ``out`` (:func:`staging_dir`) and moved into place at the end
(:func:`swap_into_place`), so an output folder is always complete: a failed or interrupted conversion leaves the
old one (or none); folders left by a killed conversion are removed by the next (:func:`remove_stale_staging`).

Examples:
    >>> from cellsdk.artefacts.resolve import default_model_path
    >>> describe_files(default_model_path())[0] > 0
    True
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

from cellsdk._io import artefact_files, combined_sha256, current_umask, sha256_file
from cellsdk.artefacts.manifest import STATUS_FAILED
from cellsdk.errors import ConfigError

__all__ = ["describe_files", "failed_entry", "process_alive", "remove_artefact", "remove_stale_staging", "staging_dir",
           "swap_into_place"]

log = logging.getLogger("cellsdk.converters")


def staging_dir(out_dir: Path) -> Path:
    """A fresh staging folder beside ``out_dir`` (stale ones of killed conversions removed first).

    Raises:
        ConfigError: the folder is not writable.

    Examples:
        >>> import tempfile
        >>> staging_dir(Path(tempfile.mkdtemp()) / "converted").name.startswith(".converted.staging-")
        True
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out_dir)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-{os.getpid()}-", dir=out_dir.parent))
    except OSError as err:
        raise ConfigError(f"{out_dir}: output folder is not writable ({err.strerror or err}); choose another --out") from None


def remove_stale_staging(out_dir: Path) -> None:
    """Remove staging / old folders beside ``out_dir`` left by a conversion that was killed (its process is gone).

    Examples:
        >>> import tempfile
        >>> remove_stale_staging(Path(tempfile.mkdtemp()) / "converted")
    """
    for leftover in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*-*"):
        kind, _, rest = leftover.name[len(out_dir.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("staging", "old") or not pid.isdigit() or not leftover.is_dir() or process_alive(int(pid)):
            continue
        log.info("removing %s, left by an interrupted conversion", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is alive (this process counts as gone: an earlier, failed run of it).

    Examples:
        >>> process_alive(os.getpid())
        False
    """
    if pid == os.getpid():
        return False  # an earlier, failed run of this same process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def describe_files(path: Path) -> tuple[int, str, list[dict[str, Any]]]:
    """Total size, one sha256 for the artefact, and every file in it (an IR has .xml + .bin, a package a tree).

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> size, digest, files = describe_files(default_model_path())
        >>> len(digest), [f["name"] for f in files]
        (64, ['bloodmnist_effnet_lite0_128.int8.onnx'])
    """
    files = artefact_files(path)
    entries: list[dict[str, Any]] = [
        {"name": str(f.relative_to(path.parent)), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]
    digest = combined_sha256([(e["name"], e["sha256"]) for e in entries])
    return sum(e["bytes"] for e in entries), digest, entries


def remove_artefact(path: Path) -> None:
    """Remove an artefact: a folder (a package) or a file with its companions (an IR's ``.bin``).

    Examples:
        >>> remove_artefact(Path("/nonexistent/model.onnx"))
    """
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        for leftover in artefact_files(path):
            leftover.unlink(missing_ok=True)


def swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``staging`` (old contents removed only once the new folder is in place).

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> staging = staging_dir(root / "converted")
        >>> swap_into_place(staging, root / "converted")
        >>> (root / "converted").is_dir(), staging.exists()
        (True, False)
    """
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    os.chmod(out_dir, 0o777 & ~current_umask())  # mkdtemp made it 0700; give it a plain mkdir's mode
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def failed_entry(entry: dict[str, Any], target: Path, what: str, err: BaseException, **seconds: float) -> dict[str, Any]:
    """The manifest entry of an artefact that failed with ``err`` (its file removed): ``what: Type: message``.

    Examples:
        >>> failed_entry({"file": "m.onnx"}, Path("/nonexistent/m.onnx"), "export", ValueError("bad op"))["reasons"]
        ['export: ValueError: bad op']
    """
    remove_artefact(target)
    detail = traceback.format_exception_only(type(err), err)[-1].strip()
    return {**entry, "status": STATUS_FAILED, "reasons": [f"{what}: {detail[:300]}"], **seconds}

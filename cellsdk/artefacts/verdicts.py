"""Where self-check verdicts live: the machine key, the artefact's digest, and the per-user cache (torch-free).

A verdict holds for one artefact (its sha256) on one machine key: the CPU class (or the GPU model), the runtime and
its version, the device and the precision — what decides the artefact's arithmetic. Verdicts are cached as one
JSON file per artefact under ``$CELLSDK_CACHE/selfcheck`` (default ``~/.cache/cellsdk/selfcheck``); see
:mod:`cellsdk.artefacts.selfcheck`.

Examples:
    >>> cache_dir().name
    'selfcheck'
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from cellsdk._io import artefact_files, combined_sha256, parse_json, sha256_file, user_cache_dir, write_json

__all__ = ["artefact_digest", "cache_dir", "key_text", "machine_key", "read_cache", "runtime_version", "write_cache"]


def machine_key(classifier: Any) -> dict[str, Any]:
    """What decides an artefact's arithmetic here: CPU class (or GPU model), runtime and version, device, precision.

    Examples:
        >>> from cellsdk import Classifier
        >>> sorted(machine_key(Classifier.load(self_check=False)))
        ['backend', 'cpu', 'cpu_class', 'device', 'precision', 'runtime', 'runtime_version']
    """
    from cellsdk.platform.cpu import host_cpu

    backend = classifier.backend
    key: dict[str, Any] = {"backend": backend.name, "runtime": backend.describe(),
                           "runtime_version": runtime_version(backend), "device": str(backend.device),
                           "precision": classifier.metadata.precision}
    device = str(backend.device).lower()
    if device.startswith(("cuda", "tensorrt")) or "cudaexecutionprovider" in device \
            or "tensorrtexecutionprovider" in device:
        from cellsdk.platform.nvml import gpu_info

        info = gpu_info() or {}
        key["gpu"] = str(info.get("name") or "unknown NVIDIA GPU")
    else:
        cpu = host_cpu()
        key["cpu_class"], key["cpu"] = cpu.cpu_class, cpu.model
    return key


def runtime_version(backend: Any) -> str:
    """The version of the runtime a backend runs on (its package's ``__version__``).

    Examples:
        >>> from cellsdk import Classifier
        >>> import onnxruntime
        >>> runtime_version(Classifier.load(self_check=False).backend) == onnxruntime.__version__
        True
    """
    module = sys.modules.get(getattr(backend, "package", ""))
    return str(getattr(module, "__version__", "unknown"))


def key_text(key: dict[str, Any]) -> str:
    """The cache's name for a machine key (the CPU's model name is shown, not keyed: the class decides).

    Examples:
        >>> key_text({"cpu": "AMD EPYC", "cpu_class": "x86-64-avx2", "runtime": "onnxruntime"})
        '{"cpu_class": "x86-64-avx2", "runtime": "onnxruntime"}'
    """
    return json.dumps({k: v for k, v in key.items() if k != "cpu"}, sort_keys=True)


def cache_dir() -> Path:
    """Where verdicts are cached: ``$CELLSDK_CACHE/selfcheck`` (default ``~/.cache/cellsdk/selfcheck``).

    Examples:
        >>> cache_dir().name
        'selfcheck'
    """
    return user_cache_dir() / "selfcheck"


def artefact_digest(path: str | os.PathLike) -> str:
    """The sha256 of an artefact (of its files' digests, for an IR or a package), memoised by size and mtime.

    Hashing a 4 MB model takes milliseconds and a 200 MB one a second: the digest of a file whose path, size and
    modification time are unchanged is read from the cache instead.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> len(artefact_digest(default_model_path()))
        64
    """
    files = artefact_files(path)
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    memo = cache_dir() / "digests" / (hashlib.sha256(repr(stats).encode()).hexdigest()[:32] + ".txt")
    try:
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    digest = combined_sha256([(str(f.relative_to(Path(path).parent)), sha256_file(f)) for f in files])
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest)
    except OSError:  # a read-only home: no memo, the digest is computed again next time
        pass
    return digest


def read_cache(digest: str) -> dict[str, Any]:
    """The artefact's cache file: ``{"artefact": name, "verdicts": {machine key: verdict}}`` (empty if none).

    Examples:
        >>> read_cache("0" * 64)
        {}
    """
    try:
        record = parse_json((cache_dir() / f"{digest}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("verdicts"), dict) else {}


def write_cache(digest: str, name: str, key: str, verdict: dict[str, Any]) -> None:
    """Add one verdict (a ``SelfCheck.to_dict()``) to the artefact's cache file, atomically.

    Examples:
        >>> import tempfile
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"CELLSDK_CACHE": tempfile.mkdtemp()}):
        ...     write_cache("1" * 64, "model.onnx", '{"runtime": "x"}', {"status": "passed"})
        ...     read_cache("1" * 64)["verdicts"]['{"runtime": "x"}']["status"]
        'passed'
    """
    record = read_cache(digest)
    verdicts = record.get("verdicts", {})
    verdicts[key] = {**verdict, "cached": False}
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_json(cache_dir() / f"{digest}.json", {"artefact": name, "verdicts": verdicts})
    except OSError:  # an unwritable cache costs a self-check per load, nothing else
        pass

"""A cached optimised ONNX Runtime graph: the second and every later load of a model on a machine skips the graph
optimisation, about half of a CPU session's start (55 instead of 120 ms for the shipped model on a 2-core EPYC).

The first CPU session of a model at the default optimisation level asks ONNX Runtime to write the graph it
optimised (``SessionOptions.optimized_model_filepath``) into cellsdk's cache; later sessions load that graph with
optimisation off. ONNX Runtime applies the same optimisations either way, so the outputs are the same numbers (the
shipped model's are bit-identical); the optimised graph may hold kernels chosen for this CPU, so the cache key
holds the model file (path, size, modification time), the ONNX Runtime version and the CPU's class and model name.
A cache that cannot be written or read is skipped (the plain session is made): it is an optimisation only.
``CELLSDK_ORT_CACHE=0`` turns it off.

Examples:
    >>> import onnxruntime as ort
    >>> from cellsdk.artefacts.resolve import default_model_path
    >>> session = cached_session(ort, default_model_path(), ort.SessionOptions(), ["CPUExecutionProvider"])
    >>> session.get_inputs()[0].shape[1:]
    [3, 128, 128]
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cellsdk._io import user_cache_dir

__all__ = ["cache_key", "cached_session"]


def cache_key(ort: Any, path: Path) -> str | None:
    """The cache entry's name for ``path`` on this machine and ONNX Runtime (None: the file cannot be read).

    Examples:
        >>> import onnxruntime as ort
        >>> cache_key(ort, Path("/nonexistent.onnx")) is None
        True
    """
    from cellsdk.platform.cpu import host_cpu

    try:
        stat = path.stat()
    except OSError:
        return None
    cpu = host_cpu()
    identity = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, getattr(ort, "__version__", None), cpu.cpu_class,
                cpu.model]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def cached_session(ort: Any, path: Path, options: Any, providers: list[Any]) -> Any:
    """An ``InferenceSession`` of ``path``: from the cached optimised graph when there is one, else a plain session
    that writes it (a CPU session at ``ORT_ENABLE_ALL`` only; any other is made as asked).

    Raises:
        Exception: whatever ``ort.InferenceSession`` raises for the model itself.

    Examples:
        >>> import onnxruntime as ort
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> cached_session(ort, default_model_path(), ort.SessionOptions(), ["CPUExecutionProvider"]).get_providers()
        ['CPUExecutionProvider']
    """
    try:
        eligible = (providers == ["CPUExecutionProvider"] and os.environ.get("CELLSDK_ORT_CACHE", "1") != "0"
                    and options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        key = cache_key(ort, path) if eligible else None
    except Exception:  # noqa: BLE001 - an onnxruntime without what the key needs: no cache
        key = None
    if key is None:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    cached = user_cache_dir() / "ort-optimised" / f"{key}.onnx"
    if cached.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), sess_options=options, providers=providers)
        except Exception:  # noqa: BLE001 - a damaged cache entry: drop it and load the model itself
            cached.unlink(missing_ok=True)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    import tempfile  # the first session only (its import, with shutil's, is 10 ms of every cold start)

    temporary = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{key}.", suffix=".onnx", dir=cached.parent)
        os.close(handle)
        temporary = Path(name)
        options.optimized_model_filepath = str(temporary)
        options.log_severity_level = 3  # its note that the graph suits this machine only: the key says so
    except OSError:  # an unwritable cache: a plain session
        temporary = None
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if temporary is not None:
        try:
            if temporary.stat().st_size > 0:
                os.replace(temporary, cached)
        except OSError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return session

"""Which of a conversion folder's verified artefacts is fastest on this machine: measured once, cached.

The latencies a manifest records were measured on the converting machine; another CPU class can rank the engines
the other way (ONNX Runtime's int8 kernels against OpenVINO's, a bf16 IR on a BF16 CPU). :func:`measure_speeds`
loads each candidate in its own runtime with its verified options, times it on a batch of 1 and a batch of 32,
and caches the figures per machine (``$CELLSDK_CACHE/speed``, keyed by the manifest's sha256, the CPU model and
class, the core count and the runtimes' versions), so only the first load of a folder on a machine pays for it
(about a second per candidate). ``CELLSDK_ENGINE_CHOICE=recorded`` skips it: the recorded latencies decide.

Examples:
    >>> per_image_ms({"batch1_ms": 2.0, "batch32_ms": 32.0})
    1.414
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import parse_json, user_cache_dir, write_json

__all__ = ["MEASURED_BACKENDS", "MEASURED_MOST", "engine_choice", "measure_speeds", "median_ms", "per_image_ms"]

#: runtimes measured when choosing (torch-free and fast on a CPU; TorchScript and CoreML keep their recorded figures)
MEASURED_BACKENDS = ("onnxruntime", "openvino")
#: at most this many candidates are timed: the fastest as recorded at conversion
MEASURED_MOST = 3
_ROUNDS_1, _ROUNDS_32 = 30, 4


def engine_choice() -> str:
    """``measured`` (default) or ``recorded`` (``$CELLSDK_ENGINE_CHOICE``).

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"CELLSDK_ENGINE_CHOICE": "recorded"}):
        ...     engine_choice()
        'recorded'
    """
    return "recorded" if os.environ.get("CELLSDK_ENGINE_CHOICE", "").strip().lower() == "recorded" else "measured"


def per_image_ms(record: dict[str, float]) -> float:
    """What ranks the candidates: the geometric mean of the per-image times at batch 1 and batch 32 (one image at a
    time and a folder job both count), rounded to the microsecond.

    Examples:
        >>> per_image_ms({"batch1_ms": 1.0, "batch32_ms": 16.0})
        0.707
    """
    return round(math.sqrt(record["batch1_ms"] * record["batch32_ms"] / 32), 3)


def _machine(backends: Sequence[str]) -> dict[str, Any]:
    """What the figures depend on: the CPU, its class, the cores, and the versions of the runtimes measured."""
    from cellsdk.platform.cpu import host_cpu
    from cellsdk.platform.machine import package_versions

    cpu = host_cpu()
    return {"cpu": cpu.model, "cpu_class": cpu.cpu_class, "cores": os.cpu_count(),
            "runtimes": package_versions(tuple(sorted(set(backends))))}


def median_ms(call: Callable[[], Any], rounds: int, warmup: int = 2) -> float:
    """The median wall time of ``call()`` over ``rounds`` calls, in ms, after ``warmup`` calls (first-call
    allocations and kernel selection).

    Examples:
        >>> median_ms(lambda: None, 3) < 1.0
        True
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _time(backend: Any, batch: np.ndarray, rounds: int) -> float:
    return median_ms(lambda: backend.run_all(batch), rounds)


def measure_speeds(manifest_path: Path, candidates: Sequence[tuple[str, str, dict[str, Any]]], input_size: int,
                   resolve: Callable[[str], Path] | None = None) -> dict[str, dict[str, float]]:
    """Batch-1 and batch-32 latency (ms, medians) of each ``(file, backend, options)`` candidate of the conversion
    folder whose manifest is ``manifest_path``; cached per manifest and machine.

    ``resolve`` turns a manifest's file name into its path (default: beside the manifest;
    :func:`cellsdk.artefacts.manifest.artefact_path` refuses one that leads outside the folder). A candidate that
    does not resolve, load or run here is left out (it is then not chosen over one that does).

    Examples:
        >>> speeds = measure_speeds(Path("runs/converted/manifest.json"),
        ...                         [("model.int8.onnx", "onnxruntime", {})], 128)  # doctest: +SKIP
        >>> sorted(speeds["model.int8.onnx"])  # doctest: +SKIP
        ['batch1_ms', 'batch32_ms', 'per_image_ms']
    """
    from cellsdk.backends import get_backend

    folder = manifest_path.parent
    where = resolve or (lambda file: folder / file)
    machine = _machine([backend for _, backend, _ in candidates])
    manifest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([manifest, machine], sort_keys=True).encode()).hexdigest()[:32]
    cache = user_cache_dir() / "speed" / f"{key}.json"
    try:
        cached = parse_json(cache.read_text(encoding="utf-8")).get("speeds", {})
    except (OSError, ValueError, AttributeError):
        cached = {}
    speeds = {file: cached[file] for file, _, _ in candidates if isinstance(cached.get(file), dict)}
    missing = [c for c in candidates if c[0] not in speeds]
    if not missing:
        return speeds
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(32, 3, input_size, input_size)).astype(np.float32)
    for file, backend_name, options in missing:
        try:
            backend_cls = get_backend(backend_name)
            backend = backend_cls(where(file), device="cpu", **backend_cls.check_options(dict(options)))
            record = {"batch1_ms": _time(backend, batch[:1], _ROUNDS_1), "batch32_ms": _time(backend, batch, _ROUNDS_32)}
        except Exception:  # noqa: BLE001 - a candidate that cannot run here is simply not measured
            continue
        record["per_image_ms"] = per_image_ms(record)
        speeds[file] = record
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"folder": str(folder), "machine": machine, "speeds": speeds})
    except OSError:  # an unwritable cache measures again next time, nothing else
        pass
    return speeds

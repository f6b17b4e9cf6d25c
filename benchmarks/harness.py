"""``cellsdk-bench``: latency, throughput, memory, size and accuracy per model x backend x device x batch, gated.

Each row is measured in its own worker process (cold start and peak memory
are the row's own). Two reference rows run in the same session: PyTorch
eager fp32 of the source checkpoint (what training code would do) and, inside
each row, the bare runtime call without cellsdk, so every figure also reads
as a ratio. Rows at the target batch size are judged PASS / FAIL against the
device class's p95 end-to-end budget (``targets.toml``); devices or backends
that are not present are listed as skipped with the reason.

A ``tensorrt`` row starts with an empty engine cache of its own, so its cold
start includes building the TensorRT engine; a second worker then loads the
same model from that cache and records ``cold_start_cached_s`` (what every
later start costs) and the cache's size. Reports on a GPU carry its name,
memory, driver and the CUDA version of the runtimes.

Examples:
    >>> from cellsdk.benchmarks import BenchConfig, run_benchmark
    >>> report = run_benchmark(["runs/a/converted"], BenchConfig(batches=(1, 32)))  # doctest: +SKIP
    >>> report["failed"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsdk._io import artefact_files
from cellsdk._progress import progress_bar
from cellsdk._validate import require_float, require_int
from cellsdk.artefacts.manifest import artefact_path, read_manifest
from cellsdk.backends import MAX_THREADS, backend_for_path, get_backend
from cellsdk.benchmarks.stats import judge, load_targets, measurement_conditions
from cellsdk.errors import ConfigError, ModelNotFoundError
from cellsdk.platform.gpu import gpu_device_kind
from cellsdk.platform.machine import machine_info, package_versions

__all__ = ["BenchConfig", "bench_failure", "discover", "parse_batches", "run_benchmark"]

DEVICES = ("cpu", "cuda", "tensorrt", "mps", "coreml")
_STRICT_REFUSALS = ("FailedVerificationError", "UnverifiedCpuError")
_VERSIONED = ("onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu13", "openvino", "torch", "coremltools",
              "numpy", "pillow")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how long.

    Attributes:
        devices: device kinds to try (``cpu``, ``cuda``, ``tensorrt``, ``mps``, ``coreml``); empty means all.
        batches: batch sizes.
        threads: inference threads (None: each runtime's default).
        warmup: untimed calls before timing.
        iterations: timed calls per measurement (ignored when ``duration`` is set).
        duration: seconds per measurement instead of a count.
        data: a dataset whose ``data_split`` gives accuracy and macro-F1 (and the timing images).
        data_split: the split used for accuracy.
        data_cropped: the data's images already have the model's crop.
        eval_limit: cap on accuracy images (the first N of the split).
        targets: a targets TOML (default: the mission's ``benchmarks/targets.toml``).
        eager: include the PyTorch eager fp32 reference rows.
        strict: leave out (as skipped rows, with the reason) artefacts that failed verification, and int8
            artefacts not verified on this machine's CPU class; by default they are measured and a failed
            artefact's row is judged FAIL whatever its speed.
    """

    devices: tuple[str, ...] = ()
    batches: tuple[int, ...] = (1, 32)
    threads: int | None = None
    warmup: int = 10
    iterations: int = 100
    duration: float | None = None
    data: str | None = None
    data_split: str = "test"
    data_cropped: bool = False
    eval_limit: int | None = None
    targets: str | None = None
    eager: bool = True
    images: tuple[str, ...] = field(default_factory=tuple)
    strict: bool = False

    def __post_init__(self) -> None:
        unknown = [d for d in self.devices if d not in DEVICES]
        if unknown:
            raise ConfigError(f"unknown device {', '.join(unknown)}: use {', '.join(DEVICES)} or auto")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be >= 1, got {self.batches}")
        if self.iterations < 1 or self.warmup < 0:
            raise ConfigError("iterations must be >= 1 and warmup >= 0")
        require_int("threads", self.threads, minimum=1, maximum=MAX_THREADS, optional=True)
        require_float("duration", self.duration, minimum=0, exclusive=True, optional=True)
        require_int("eval_limit", self.eval_limit, minimum=1, optional=True)


def discover(models: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every artefact to measure: files as given, conversion folders expanded to their artefacts.

    Raises:
        ModelNotFoundError: a path that does not exist.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> [entry["backend"] for entry in discover([default_model_path()])]
        ['onnxruntime']
    """
    found = []
    for model in models:
        path = Path(model)
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such model file or folder")
        if path.is_dir() and path.suffix != ".mlpackage":
            manifest = read_manifest(path)
            checkpoint = (manifest.get("source_checkpoint") or {}).get("path")
            size = ((manifest.get("metadata") or {}).get("preprocessing") or {}).get("input_size")
            for entry in manifest["artefacts"]:
                file = artefact_path(path, entry["file"])
                if entry.get("status") == "skipped" or not file.exists():
                    continue
                found.append({"path": str(file), "precision": entry.get("precision", "?"),
                              "backend": entry.get("backend") or backend_for_path(entry["file"]).name,
                              "options": entry.get("runtime_options") or {}, "verified": entry.get("status"),
                              "checkpoint": checkpoint, "group": str(path), "input_size": size})
        else:
            found.append({"path": str(path), "precision": "?", "backend": backend_for_path(path).name,
                          "options": {}, "verified": None, "checkpoint": None, "group": str(path.parent),
                          "input_size": None})
    return found


def _available_devices() -> dict[str, str | None]:
    """Each device kind: None if this machine has it, else why not (what each runtime needs on top is asked of
    the backend: an onnxruntime row needs onnxruntime-gpu, a TorchScript row a CUDA build of torch)."""
    from cellsdk.platform.gpu import driver_problem

    reasons: dict[str, str | None] = {"cpu": None}
    reasons["coreml"] = None if sys.platform == "darwin" else f"CoreML needs macOS (this is {sys.platform})"
    reasons["cuda"] = reasons["tensorrt"] = driver_problem()  # torch-free: the driver and a GPU
    try:
        import torch

        mps = getattr(torch.backends, "mps", None)
        reasons["mps"] = None if mps is not None and mps.is_available() else "no Apple MPS device on this machine"
    except ImportError:
        reasons["mps"] = "torch is not installed (needed for MPS)"
    return reasons


def _eager_unavailable(device: str) -> str | None:
    """Why the PyTorch eager reference cannot run on ``device``, or None."""
    if device == "cpu":
        return None
    try:
        import torch
    except ImportError:
        return "torch is not installed: pip install 'cellsdk[train]'"
    from cellsdk.platform.gpu import torch_cuda_problem

    return torch_cuda_problem(torch)


def _device_class(device: str) -> str:
    if device in ("mps", "coreml") or (sys.platform == "darwin" and platform.machine() == "arm64"):
        return "m2"
    return "cuda" if device in ("cuda", "tensorrt") else "cpu"


def _plan(artefacts: list[dict[str, Any]], config: BenchConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    wanted = config.devices or DEVICES
    present = _available_devices()
    jobs, skipped = [], []
    for artefact in artefacts:
        backend = get_backend(artefact["backend"])
        missing = backend.unavailable_reason()
        for device in wanted:
            if device not in backend.devices:
                continue
            name = f"{Path(artefact['path']).name} on {device}"
            reason = missing or present.get(device) or backend.device_unavailable_reason(device)
            if reason:
                skipped.append({"row": name, "reason": reason})
                continue
            for batch in config.batches:
                jobs.append({"kind": "cellsdk", **artefact, "device": device, "batch": batch})
    if config.eager:
        # one eager reference per conversion folder, at that folder's input size (a model may be exported at 224)
        checkpoints = {(a["checkpoint"], a["group"], a.get("input_size")) for a in artefacts if a.get("checkpoint")}
        for checkpoint, group, input_size in sorted(checkpoints, key=str):
            if not Path(checkpoint).is_file():
                skipped.append({"row": f"PyTorch eager ({checkpoint})", "reason": "source checkpoint not found"})
                continue
            for device in ("cpu", "cuda"):
                if device not in wanted:
                    continue
                reason = present.get(device) or _eager_unavailable(device)
                if reason:
                    skipped.append({"row": f"PyTorch eager ({Path(checkpoint).name}) on {device}", "reason": reason})
                    continue
                for batch in config.batches:
                    jobs.append({"kind": "eager", "path": checkpoint, "precision": "fp32", "backend": "pytorch-eager",
                                 "options": {}, "device": device, "batch": batch, "group": group, "verified": None,
                                 "input_size": input_size})
    return jobs, skipped


def _images(config: BenchConfig) -> tuple[list[str], list[str], list[str]]:
    """Timing images, and the accuracy images with their labels (by name) when ``data`` is given."""
    from cellsdk.datasets import load_dataset

    if config.data is None:
        timing = list(config.images) or [str(p) for p in sorted(Path(__file__).resolve().parents[1].glob(
            "samples/bloodmnist_128/test/*/*.jpg"))]
        if not timing:
            raise ConfigError("no images to time with: pass --data DIR")
        return timing, [], []
    dataset = load_dataset(config.data)
    split = dataset.split(config.data_split)
    if split.paths is None:
        raise ConfigError(f"{config.data}: benchmark data must be image files (end-to-end decodes them), not .npz")
    count = len(split) if config.eval_limit is None else min(config.eval_limit, len(split))
    step = max(1, len(split) // count)
    chosen = list(range(0, len(split), step))[:count]  # spread over classes (files are grouped by class)
    names = [dataset.labels[int(split.targets[i])] for i in chosen]
    return [str(split.paths[i]) for i in chosen[:64]], [str(split.paths[i]) for i in chosen], names


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "cellsdk.benchmarks.worker"], input=json.dumps(spec),
                            capture_output=True, text=True)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    try:
        return json.loads(last)
    except ValueError:
        return {"ok": False, "error": (result.stderr.strip().splitlines() or ["worker produced no result"])[-1]}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One row's worker; on ``tensorrt``, from an empty engine cache, then once more from the cache it filled."""
    if gpu_device_kind(spec["device"]) != "tensorrt":
        return _run_worker(spec)
    cache = tempfile.mkdtemp(prefix="cellsdk-bench-tensorrt-")
    try:
        spec = {**spec, "options": {**(spec.get("options") or {}), "tensorrt_cache": cache}}
        result = _run_worker(spec)
        if result.get("ok"):
            result["engine_cache_mb"] = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) / 1e6
            again = _run_worker({**spec, "cold_only": True, "eval_images": [], "eval_names": [], "bare": False})
            if again.get("ok"):
                result["cold_start_cached_s"] = again["cold_start_s"]
            else:
                result["cold_start_cached_error"] = again.get("error")
        return result
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _gpu_facts(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The GPU the cuda / tensorrt rows ran on and the CUDA builds of the runtimes, or None without such rows."""
    if not any(gpu_device_kind(r["device"]) for r in rows):
        return None
    from cellsdk.platform.gpu import onnxruntime_build
    from cellsdk.platform.nvml import gpu_info

    facts: dict[str, Any] = {"gpu": gpu_info(0), "memory_note": "GPU MB = memory in use on the GPU after the row "
                             "minus before it (NVML, whole device; nothing else ran on it)"}
    try:
        import onnxruntime

        build = onnxruntime_build(onnxruntime)
        facts["onnxruntime"] = {"package": build.package, "version": build.version, "providers": list(build.providers),
                                "cuda": ".".join(map(str, build.cuda)) if build.cuda else None,
                                "tensorrt_major": build.tensorrt_major}
    except ImportError:
        pass
    try:
        import torch  # only on a GPU run: which CUDA and cuDNN the eager / TorchScript rows used

        facts["torch_cuda"] = torch.version.cuda
        facts["torch_cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except ImportError:
        pass
    return facts


def run_benchmark(models: Sequence[str | os.PathLike], config: BenchConfig | None = None, *,
                  progress: bool = True) -> dict[str, Any]:
    """Measure every artefact of ``models`` and return the report (rows, skipped, machine, targets).

    Raises:
        ModelNotFoundError, ConfigError: before anything is measured.

    Examples:
        >>> report = run_benchmark(["runs/a/converted"], BenchConfig(batches=(1,), iterations=20))  # doctest: +SKIP
        >>> report["failed"]  # doctest: +SKIP
        0
    """
    config = config or BenchConfig()
    targets = load_targets(config.targets)
    artefacts = discover(models)
    jobs, skipped = _plan(artefacts, config)
    timing, eval_images, eval_names = _images(config)
    bar = progress_bar(len(jobs), "benchmark", progress, unit="row")
    rows = []
    for job in jobs:
        bar.set_postfix_str(f"{Path(job['path']).name} {job['device']} b{job['batch']}")
        spec = {"kind": job["kind"], "model": job["path"], "backend": None if job["kind"] == "eager" else job["backend"],
                "device": job["device"], "options": job["options"], "batch": job["batch"], "images": timing,
                "warmup": config.warmup, "iterations": config.iterations, "duration": config.duration,
                "threads": config.threads, "data_cropped": config.data_cropped, "bare": job["kind"] != "eager",
                "input_size": job.get("input_size"),
                "eval_images": eval_images if job["batch"] == config.batches[0] else [],
                "eval_names": eval_names if job["batch"] == config.batches[0] else [], "strict": config.strict}
        result = _measure(spec)
        if result.get("ok") and measurement_conditions(result) != "ok":  # measured on a busy machine: once more
            again = _measure(spec)
            if again.get("ok") and (again.get("other_load_cores") or 0) < (result.get("other_load_cores") or 0):
                result = again
            result["measured_twice"] = True
        bar.update(1)
        if config.strict and str(result.get("error", "")).startswith(_STRICT_REFUSALS):
            skipped.append({"row": f"{Path(job['path']).name} on {job['device']} b{job['batch']}",
                            "reason": result["error"].split(": ", 1)[-1]})
            continue
        row = {"model": Path(job["path"]).name, "path": job["path"], "group": job["group"],
               "precision": job["precision"], "backend": job["backend"], "device": job["device"],
               "device_class": _device_class(job["device"]), "batch": job["batch"],
               "size_mb": _size_mb(Path(job["path"])) if job["kind"] != "eager" else None, **result}
        row["precision"] = result.get("precision", job["precision"])  # the artefact's own metadata wins
        row["verified"] = "reference" if job["kind"] == "eager" else result.get("verification", job["verified"])
        row["status"], row["target_ms"] = judge(row, targets) if result.get("ok") else ("ERROR", None)
        if result.get("ok") and row["verified"] == "failed":
            row["status"] = "FAIL"  # fast or not, an artefact that failed verification does not pass
            row["status_reason"] = "the artefact failed verification"
        row["conditions"] = measurement_conditions(row)
        rows.append(row)
    bar.close()
    _ratios(rows)
    machine = machine_info()
    gpu = _gpu_facts(rows)
    if gpu is not None:
        machine["nvidia"] = gpu
    return {"machine": machine, "config": {**config.__dict__, "images": len(timing)},
            "targets": {k: dict(v) for k, v in targets.items()}, "rows": rows, "skipped": skipped,
            "failed": sum(r["status"] in ("FAIL", "ERROR") for r in rows), "versions": package_versions(_VERSIONED)}


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in artefact_files(path) if f.exists()) / 1e6


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's end-to-end p50 against PyTorch eager (same group, device, batch) and the bare runtime call."""
    eager = {(r["group"], r["device"], r["batch"]): r for r in rows if r["backend"] == "pytorch-eager" and r.get("ok")}
    for row in rows:
        if not row.get("ok"):
            continue
        reference = eager.get((row["group"], row["device"], row["batch"])) or eager.get((row["group"], "cpu", row["batch"]))
        if reference is not None:
            row["speedup_vs_eager"] = reference["e2e"]["p50_ms"] / row["e2e"]["p50_ms"]
        if "bare_e2e" in row:
            row["vs_bare"] = row["e2e"]["p50_ms"] / row["bare_e2e"]["p50_ms"]


def parse_batches(text: str) -> tuple[int, ...]:
    """Batch sizes from a comma-separated list (``cellsdk-bench --batch``).

    Raises:
        ConfigError: anything but whole numbers.

    Examples:
        >>> parse_batches("1, 8,32")
        (1, 8, 32)
    """
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--batch {text!r}: use whole numbers such as 1,8,32") from None


def bench_failure(report: dict[str, Any], config: BenchConfig) -> str | None:
    """Why a benchmark run should exit non-zero (a failed row, or nothing measured on an explicit device), or None.

    Examples:
        >>> bench_failure({"failed": 0, "rows": [{}], "skipped": []}, BenchConfig()) is None
        True
    """
    if report["failed"]:
        return (f"{report['failed']} row(s) failed: latency target missed, artefact failed verification, or an "
                "error (see the result column and the notes)")
    if not report["rows"] and config.devices:
        first = report["skipped"][0]["reason"] if report["skipped"] else "no artefact runs on them"
        return (f"nothing measured on --device {','.join(config.devices)}: every row was skipped ({first}); "
                "`cellsdk devices` shows what each device needs")
    return None

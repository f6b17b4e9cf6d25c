"""One benchmark measurement, run in its own process so cold start and peak memory are the row's own.

The harness starts ``python -m cellsdk.benchmarks.worker`` with a JSON spec on
standard input and reads one JSON object from the last line of its output.

Measured: cold start (load + first prediction), end-to-end latency (read +
decode + preprocess + infer from image files, as a user's code would) per
call, and model-only latency: the time spent inside the runtime call during
those same calls (so it can never exceed end-to-end); the bare runtime call
without cellsdk (end-to-end, same images), accuracy on a dataset, the
process's peak memory, and how many cores other processes kept busy while
the row was timed (Linux), so a row measured on a busy machine is flagged.
On ``cuda`` / ``tensorrt``, also the GPU memory the row held (NVML: memory in
use on that GPU after the row minus before it) and, for PyTorch rows, the
peak its caching allocator reserved. A spec with ``cold_only`` stops after
the cold start (the harness uses it to time a TensorRT load from a warm
engine cache).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ENERGY_UNAVAILABLE", "cpu_busy_seconds", "energy_joules", "run_spec", "vm_hwm_mb"]

#: what the report says where the machine exposes no energy counter
ENERGY_UNAVAILABLE = "not available (no RAPL / powercap counter readable in /sys/class/powercap)"
_POWERCAP = "/sys/class/powercap"


class _Stopwatch:
    """Accumulates the time spent inside a wrapped function (the runtime call inside an end-to-end call)."""

    def __init__(self) -> None:
        self.spent = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - start

        return timed

    def take(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


def _timed(call: Callable[[], Any], warmup: int, iterations: int, duration: float | None,
           inner: _Stopwatch | None = None) -> tuple[list[float], list[float]]:
    """Per-call wall times of ``call``, and the time ``inner`` measured inside each of those same calls.

    The inner time of a call is part of that call, so every percentile of it is at most the same percentile
    of the whole: model-only can never exceed end-to-end, however busy the machine.
    """
    for _ in range(warmup):
        call()
    times: list[float] = []
    inside: list[float] = []
    deadline = time.perf_counter() + duration if duration else None
    if inner is not None:
        inner.take()
    while (len(times) < iterations) if deadline is None else (time.perf_counter() < deadline or len(times) < 3):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if inner is not None:
            inside.append(inner.take())
    return times, inside


def cpu_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), or None elsewhere.

    Examples:
        >>> busy = cpu_busy_seconds()
        >>> busy is None or busy > 0
        True
    """
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class _LoadMeter:
    """How many cores *other* processes kept busy while this one measured (machine busy time minus ours)."""

    def __enter__(self) -> _LoadMeter:
        self.wall, self.busy, self.own = time.perf_counter(), cpu_busy_seconds(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.wall
        busy = cpu_busy_seconds()
        self.other_cores = None if busy is None or self.busy is None or wall <= 0 else max(
            0.0, ((busy - self.busy) - (_own_cpu_seconds() - self.own)) / wall)


def _package_domains() -> list[str]:
    """The top-level RAPL domains (one per CPU package; their sub-domains are parts of them, not added)."""
    try:
        names = sorted(os.listdir(_POWERCAP))
    except OSError:
        return []
    return [os.path.join(_POWERCAP, n) for n in names if n.count(":") == 1 and n.split(":")[0].endswith("rapl")]


def energy_joules() -> dict[str, tuple[float, float]] | None:
    """Each CPU package's energy counter (joules since some start, and the value where it wraps), from RAPL /
    powercap; None where none is readable (most VMs, containers without the files, non-Linux).

    Examples:
        >>> counters = energy_joules()
        >>> counters is None or all(joules >= 0 for joules, _ in counters.values())
        True
    """
    counters = {}
    for domain in _package_domains():
        try:
            with open(os.path.join(domain, "energy_uj")) as energy:
                joules = int(energy.read()) / 1e6
            try:
                with open(os.path.join(domain, "max_energy_range_uj")) as limit:
                    wrap = int(limit.read()) / 1e6
            except (OSError, ValueError):
                wrap = 0.0
        except (OSError, ValueError):  # present but unreadable (root only since 2020's PLATYPUS fix)
            continue
        counters[domain] = (joules, wrap)
    return counters or None


def _joules_between(before: dict[str, tuple[float, float]] | None,
                    after: dict[str, tuple[float, float]] | None) -> float | None:
    if not before or not after or set(before) != set(after):
        return None
    total = 0.0
    for domain, (start, wrap) in before.items():
        end = after[domain][0]
        total += end - start if end >= start else end + wrap - start  # the counter wrapped once
    return total


class _CostMeter:
    """CPU-seconds of this whole process (every thread) and package energy over the timed calls."""

    def __enter__(self) -> _CostMeter:  # process_time: every thread of the process, at a nanosecond clock
        self.cpu, self.energy = time.process_time(), energy_joules()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cpu_seconds = time.process_time() - self.cpu
        self.joules = _joules_between(self.energy, energy_joules())


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """A process's peak resident memory from VmHWM of /proc/PID/status (Linux), or None where there is none.

    Examples:
        >>> import os
        >>> peak = vm_hwm_mb(os.getpid())
        >>> peak is None or peak > 1
        True
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def _peak_memory_mb() -> float:
    """This process's peak resident memory.

    On Linux, VmHWM of /proc/self/status: ``ru_maxrss`` survives exec, so a worker started
    from a large parent (one that has torch and models loaded) would report the parent's size.
    """
    peak_mb = vm_hwm_mb()
    if peak_mb is not None:
        return peak_mb
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def gpu_index(device: str) -> int | None:
    """The CUDA device index of ``cuda``, ``cuda:N``, ``tensorrt`` or ``tensorrt:N``, else None.

    Examples:
        >>> gpu_index("cuda"), gpu_index("tensorrt:1"), gpu_index("cpu")
        (0, 1, None)
    """
    from cellsdk.platform.gpu import device_index, gpu_device_kind

    return device_index(device) if gpu_device_kind(device) else None


def _gpu_memory(out: dict[str, Any], index: int, baseline: float | None) -> None:
    """Record the GPU memory this row held: NVML's device memory now minus before the load, and torch's peak."""
    from cellsdk.platform.nvml import gpu_memory_used_mb

    now = gpu_memory_used_mb(index)
    if baseline is not None and now is not None:
        out["gpu_memory_mb"] = max(0.0, now - baseline)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        out["torch_cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(index) / 2**20


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (model, backend, device, batch) as ``spec`` says; see the harness for the fields.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> row = run_spec({"path": str(default_model_path()), "backend": "onnxruntime", "device": "cpu", "batch": 1,
        ...                 "warmup": 1, "iterations": 3})  # doctest: +SKIP
        >>> row["p50_ms"] > 0  # doctest: +SKIP
        True
    """
    import numpy as np
    from PIL import Image

    from cellsdk.benchmarks.stats import latency_summary
    from cellsdk.metrics import classification_report, softmax
    from cellsdk.preprocessing import preprocess

    batch, paths = spec["batch"], spec["images"]
    chunk = [paths[i % len(paths)] for i in range(batch)]
    timing = (spec["warmup"], spec["iterations"], spec.get("duration"))
    out: dict[str, Any] = {}
    stopwatch = _Stopwatch()
    gpu = gpu_index(spec["device"])
    baseline: float | None = None
    if gpu is not None:
        from cellsdk.platform.nvml import gpu_memory_used_mb

        baseline = gpu_memory_used_mb(gpu)
    started = time.perf_counter()
    if spec["kind"] == "eager":
        import torch

        from cellsdk.training.checkpoint import load_checkpoint

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        model, metadata = load_checkpoint(spec["model"])
        model = model.to(device).eval()
        prep = metadata.preprocessing
        if spec.get("input_size"):  # the same size as the converted artefacts it is compared with
            prep = dataclasses.replace(prep, input_size=int(spec["input_size"]))
        prep = prep.without_crop() if spec.get("data_cropped") else prep

        def forward(array: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(array).to(device)).float().cpu().numpy()

        timed_forward = stopwatch.wrap(forward)

        def e2e() -> Any:
            return timed_forward(np.stack([preprocess(p, prep) for p in chunk]))

        e2e()
        out["cold_start_s"] = time.perf_counter() - started
        labels = metadata.labels
    else:
        from cellsdk.classifier import Classifier

        options = dict(spec.get("options") or {})
        if spec.get("threads"):
            options["threads"] = spec["threads"]
        classifier = Classifier.load(spec["model"], backend=spec["backend"], device=spec["device"],
                                     strict=bool(spec.get("strict")), **options)
        out["verification"] = classifier.verification.status
        # end-to-end runs the model's own preprocessing, as users do; model-only and accuracy use the data's
        prep = (classifier.metadata.preprocessing.without_crop() if spec.get("data_cropped")
                else classifier.metadata.preprocessing)

        def forward(array: np.ndarray) -> np.ndarray:
            return classifier.raw_outputs(array)

        classifier.backend.run_all = stopwatch.wrap(classifier.backend.run_all)  # type: ignore[method-assign]

        def e2e() -> Any:
            return classifier.predict(chunk[0]) if batch == 1 else classifier.predict_batch(chunk, batch_size=batch)

        e2e()
        out["cold_start_s"] = time.perf_counter() - started
        out["runtime"] = classifier.backend.describe()
        out["precision"] = classifier.metadata.precision
        labels = classifier.labels
    if spec.get("cold_only"):
        if gpu is not None:
            _gpu_memory(out, gpu, baseline)
        return out
    out["input_size"] = prep.input_size
    with _LoadMeter() as load, _CostMeter() as cost:
        e2e_times, model_times = _timed(e2e, *timing, inner=stopwatch)
    images = len(e2e_times) * batch
    out["cpu_seconds_per_image"] = cost.cpu_seconds / images  # whole process, every thread, end to end
    out["joules_per_image"] = cost.joules / images if cost.joules is not None else None
    out["energy"] = "RAPL package counters (the whole CPU package, other processes included)" \
        if cost.joules is not None else ENERGY_UNAVAILABLE
    out["e2e"] = latency_summary(e2e_times, batch=batch)
    out["model_only"] = latency_summary(model_times, batch=batch)  # the runtime's share of the same calls
    out["other_load_cores"] = load.other_cores
    if spec.get("bare") and spec["kind"] != "eager":
        from cellsdk.benchmarks.overhead import hand_written_parts

        prepare, infer = hand_written_parts(spec["model"], prep, spec["backend"], spec.get("options"))
        step = classifier.backend.max_batch or batch  # a static-batch model takes its own batch size per call

        def bare() -> Any:
            arrays = np.concatenate([prepare(Image.open(p).convert("RGB")) for p in chunk])
            return [infer(arrays[i:i + step]) for i in range(0, len(arrays), step)]

        out["bare_e2e"] = latency_summary(_timed(bare, *timing)[0], batch=batch)
    if spec.get("eval_images"):
        unknown = sorted(set(spec["eval_names"]) - set(labels))
        if unknown:
            raise ValueError(f"data classes {', '.join(unknown)} are not among the model's labels")
        targets = np.asarray([list(labels).index(name) for name in spec["eval_names"]])  # class names -> model order
        scores = np.concatenate([forward(np.stack([preprocess(p, prep) for p in spec["eval_images"][i:i + 32]]))
                                 for i in range(0, len(spec["eval_images"]), 32)])
        report = classification_report(targets, softmax(scores.astype(np.float64)), labels)
        out["accuracy"], out["macro_f1"] = report["accuracy"], report["macro_f1"]
    out["peak_memory_mb"] = _peak_memory_mb()
    if gpu is not None:
        _gpu_memory(out, gpu, baseline)
    return out


def main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        result = {"ok": True, **run_spec(spec)}
    except Exception as err:  # noqa: BLE001 - reported as the row's error, the harness goes on
        result = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

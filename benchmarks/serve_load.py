"""Load test of ``cellsdk serve`` on a loopback port, against in-process ``predict_batch`` on the same machine.

``cellsdk-bench --serve-load DIR`` (or ``python -m cellsdk.benchmarks.serve_load DIR``):

1. reads the images of DIR (e.g. the raw PBC originals) into memory and classifies them in process with
   ``Classifier.predict_batch`` (the engine's default split of the cores): images/s, and each image's label;
2. for each service mode — micro-batching (``--max-batch 32 --max-wait-ms 5``, the defaults) and without it
   (``--max-batch 1``) — starts ``cellsdk serve --port 0`` in its own process, warms it up, then lets
   ``clients`` concurrent clients post the images as raw bodies, each waiting for its answer before sending the
   next (a closed loop), for ``duration`` seconds or ``max_requests`` requests, whichever comes first, and stops
   the service with SIGTERM;
3. measures in process again (the in-process figure is the median of the before and after runs).

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams (no HTTP library: on a small machine the
client shares the cores with the service, so it must cost little); its CPU time is reported. Every answer must be
``200`` with the label the in-process run gave that image; anything else counts as an error. Latency is from
sending a request to reading its whole answer. CPU use is the service process's CPU seconds over the load
window (cores busy), and the machine's busy share (``/proc/stat``).

Examples:
    >>> report = run_serve_load(ServeLoadConfig(folder="samples/pbc_raw", duration=2, clients=4))  # doctest: +SKIP
    >>> report["rows"][0]["errors"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cellsdk._validate import require_float, require_int
from cellsdk.errors import ConfigError

__all__ = ["ServeLoadConfig", "format_serve_load", "run_serve_load", "serve_load_failures", "write_serve_load"]


@dataclass(frozen=True)
class ServeLoadConfig:
    """What the load test runs.

    Attributes:
        folder: the images to post (walked as ``cellsdk predict`` walks a folder).
        model: a model file or folder (default: the shipped model).
        duration: seconds of load per mode.
        clients: concurrent clients (each with one keep-alive connection, one request at a time).
        max_requests: stop a mode after this many requests even if ``duration`` has not passed.
        modes: (name, extra ``cellsdk serve`` options) for each service mode.
        warmup: requests sent (and not measured) before each mode's load.
        timeout: seconds one request may take before it counts as an error.
    """

    folder: str
    model: str | None = None
    duration: float = 60.0
    clients: int = 32
    max_requests: int = 1_000_000
    modes: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("micro-batching", ("--max-batch", "32", "--max-wait-ms", "5")),
        ("no batching", ("--max-batch", "1", "--max-wait-ms", "0")),
    )
    warmup: int = 64
    timeout: float = 30.0

    def __post_init__(self) -> None:
        require_float("duration", self.duration, minimum=0, exclusive=True)
        require_int("clients", self.clients, minimum=1, maximum=4096)
        require_int("max_requests", self.max_requests, minimum=1)
        require_int("warmup", self.warmup, minimum=0)
        require_float("timeout", self.timeout, minimum=0, exclusive=True)


# ---------------------------------------------------------------------- the client

@dataclass
class _Tally:
    latencies: list[float]
    errors: dict[str, int]
    sent: int = 0
    done: int = 0


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the service closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def _requests(bodies: Sequence[bytes], host: str, port: int) -> list[bytes]:
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
    return [(head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies]


async def _one_client(host: str, port: int, requests: list[bytes], expected: list[str | None], tally: _Tally,
                      start: int, stop: Callable[[], bool], timeout: float, record: bool) -> None:
    reader = writer = None
    i = start
    try:
        while not stop():
            index = i % len(requests)
            i += 1
            tally.sent += 1
            began = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(requests[index])
                await writer.drain()
                status, headers, body = await asyncio.wait_for(_read_answer(reader), timeout)  # type: ignore[arg-type]
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as err:
                tally.errors[type(err).__name__] = tally.errors.get(type(err).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)  # not a busy loop against a service that went away
                continue
            elapsed = time.perf_counter() - began
            if status != 200:
                tally.errors[f"HTTP {status}"] = tally.errors.get(f"HTTP {status}", 0) + 1
            elif json.loads(body)["predictions"][0]["label"] != expected[index]:
                tally.errors["label differs from in-process"] = tally.errors.get("label differs from in-process",
                                                                                 0) + 1
            elif record:
                tally.latencies.append(elapsed)
                tally.done += 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _load(host: str, port: int, requests: list[bytes], expected: list[str | None], *, clients: int,
                duration: float, max_requests: int, timeout: float, record: bool = True) -> tuple[_Tally, float]:
    tally = _Tally([], {})
    started = time.perf_counter()
    deadline = started + duration

    def stop() -> bool:
        return tally.sent >= max_requests or time.perf_counter() >= deadline

    step = max(1, len(requests) // clients)
    await asyncio.gather(*(_one_client(host, port, requests, expected, tally, c * step, stop, timeout, record)
                           for c in range(clients)))
    return tally, time.perf_counter() - started


# ---------------------------------------------------------------------- the service process

def _process_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


async def _get(host: str, port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    _, _, body = await _read_answer(reader)
    writer.close()
    return body.decode()


def _mode(name: str, options: Sequence[str], config: ServeLoadConfig, requests_of: Callable[[int], list[bytes]],
          expected: list[str | None], progress: Callable[[str], None] | None) -> dict[str, Any]:
    from cellsdk.benchmarks.stats import latency_summary
    from cellsdk.benchmarks.worker import cpu_busy_seconds, vm_hwm_mb
    from cellsdk.serve.process import start_service

    service = start_service([*(["--model", config.model] if config.model else []), *options])
    process, port, host = service.process, service.port, "127.0.0.1"
    requests = requests_of(port)
    try:
        if config.warmup:
            asyncio.run(_load(host, port, requests, expected, clients=min(config.clients, 8), duration=60,
                              max_requests=config.warmup, timeout=config.timeout, record=False))
        if progress:
            progress(f"serve-load: {name}: {config.clients} clients for {config.duration:g} s")
        cores = os.cpu_count() or 1
        service_cpu, machine, own = _process_cpu_seconds(process.pid), cpu_busy_seconds(), os.times()
        tally, wall = asyncio.run(_load(host, port, requests, expected, clients=config.clients,
                                        duration=config.duration, max_requests=config.max_requests,
                                        timeout=config.timeout))
        service_after, machine_after, own_after = _process_cpu_seconds(process.pid), cpu_busy_seconds(), os.times()
        metrics = asyncio.run(_get(host, port, "/metrics"))
        peak = vm_hwm_mb(process.pid)
    finally:
        code = service.stop()
    batches, images = _metric(metrics, "cellsdk_batch_size_count"), _metric(metrics, "cellsdk_batch_size_sum")
    latency = latency_summary(tally.latencies) if tally.latencies else {}
    return {
        "mode": name, "options": " ".join(options), "clients": config.clients, "seconds": round(wall, 2),
        "requests": tally.sent, "answered": tally.done, "errors": sum(tally.errors.values()),
        "error_kinds": tally.errors,
        "images_per_s": round(tally.done / wall, 1) if wall > 0 else None,
        **{key: _round(latency.get(key)) for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
        "mean_batch": round(images / batches, 2) if batches and images else None,
        "service_cores_busy": None if service_cpu is None or service_after is None
        else round((service_after - service_cpu) / wall, 2),
        "client_cores_busy": round(((own_after.user + own_after.system) - (own.user + own.system)) / wall, 2),
        "machine_cpu_percent": None if machine is None or machine_after is None
        else round(100 * (machine_after - machine) / (wall * cores), 1),
        "service_peak_mb": _round(peak), "service_exit_code": code,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _in_process(model: str | None, bodies: list[bytes]) -> tuple[float, list[str | None]]:
    from cellsdk import Classifier
    from cellsdk.batch.engine import default_split

    decoders, threads = default_split()
    classifier = Classifier.load(model, threads=threads)
    classifier.predict_batch(bodies[:64], workers=decoders)  # warm-up
    started = time.perf_counter()
    predictions = classifier.predict_batch(bodies, workers=decoders)
    seconds = time.perf_counter() - started
    return len(bodies) / seconds, [p.label if p else None for p in predictions]


def run_serve_load(config: ServeLoadConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the load test (see the module docstring); a report dictionary.

    Raises:
        ConfigError: no images in the folder, or the service would not start.

    Examples:
        >>> report = run_serve_load(ServeLoadConfig(folder="samples/pbc_raw", duration=5))  # doctest: +SKIP
    """
    from cellsdk.batch.jobs import iter_inputs
    from cellsdk.platform.cpu import host_cpu
    from cellsdk.serve import require_serve_packages

    require_serve_packages()
    paths = [Path(p) for p in iter_inputs([Path(config.folder)])]
    if not paths:
        raise ConfigError(f"{config.folder}: no images to post")
    bodies = [p.read_bytes() for p in paths]
    if progress:
        progress(f"serve-load: {len(bodies)} images; in process first")
    before, expected = _in_process(config.model, bodies)
    rows = [_mode(name, options, config, lambda port: _requests(bodies, "127.0.0.1", port), expected, progress)
            for name, options in config.modes]
    after, again = _in_process(config.model, bodies)
    if again != expected:
        raise ConfigError("in-process labels changed between two runs of the same images; the model is not "
                          "deterministic here, and the label check would be meaningless")
    in_process = statistics.median([before, after])
    for row in rows:
        row["ratio_to_in_process"] = None if row["images_per_s"] is None else round(row["images_per_s"] / in_process, 3)
    cpu = host_cpu()
    return {"machine": {"model": cpu.model, "cpu_class": cpu.cpu_class, "cores": os.cpu_count()},
            "folder": str(config.folder), "images": len(bodies), "model": config.model or "shipped",
            "config": {k: v for k, v in asdict(config).items() if k != "folder"},
            "in_process_images_per_s": {"before": round(before, 1), "after": round(after, 1),
                                        "median": round(in_process, 1)},
            "rows": rows}


def format_serve_load(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the machine and the in-process figure above it.

    Examples:
        >>> print(format_serve_load(report))  # doctest: +SKIP
    """
    machine = report["machine"]
    ip = report["in_process_images_per_s"]
    lines = [f"{machine['model']}, class {machine['cpu_class']}, {machine['cores']} cores; {report['images']} images "
             f"of {report['folder']}, raw bodies; {report['rows'][0]['clients'] if report['rows'] else 0} clients "
             f"for {report['config']['duration']:g} s per mode",
             f"in-process predict_batch: {ip['median']} img/s (before {ip['before']}, after {ip['after']})", "",
             "| mode | requests | errors | p50 ms | p95 ms | p99 ms | img/s | vs in-process | mean batch | "
             "service cores | client cores | machine CPU % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        kinds = f" ({', '.join(f'{k}: {v}' for k, v in r['error_kinds'].items())})" if r["error_kinds"] else ""
        lines.append(f"| {r['mode']} | {r['requests']} | {r['errors']}{kinds} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['p99_ms']} | {r['images_per_s']} | {r['ratio_to_in_process']} | {r['mean_batch']} | "
                     f"{r['service_cores_busy']} | {r['client_cores_busy']} | {r['machine_cpu_percent']} |")
    return "\n".join(lines)


def write_serve_load(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """``serve_load.json`` and ``serve_load.md`` in ``out_dir``.

    Examples:
        >>> [p.name for p in write_serve_load(report, "runs/load")]  # doctest: +SKIP
        ['serve_load.json', 'serve_load.md']
    """
    from cellsdk._io import write_json, write_text

    out = Path(out_dir)
    return [write_json(out / "serve_load.json", report), write_text(out / "serve_load.md",
                                                                     format_serve_load(report) + "\n")]


if __name__ == "__main__":  # pragma: no cover - python -m cellsdk.benchmarks.serve_load DIR [SECONDS]
    from cellsdk.benchmarks._script import run_script

    def _main() -> int:
        duration = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
        report = run_serve_load(ServeLoadConfig(folder=sys.argv[1], duration=duration), progress=print)
        print(format_serve_load(report))
        return 0 if all(row["errors"] == 0 for row in report["rows"]) else 1

    run_script(_main, prog="serve_load")


def serve_load_failures(report: dict[str, Any]) -> str | None:
    """Why a load test should exit non-zero (a mode answered with errors or did not stop cleanly), or None.

    Examples:
        >>> serve_load_failures({"rows": [{"mode": "no batching", "errors": 0, "service_exit_code": 0}]}) is None
        True
    """
    failed = [row["mode"] for row in report["rows"] if row["errors"] or row["service_exit_code"] != 0]
    if failed:
        return f"the service answered with errors, or did not stop cleanly, in: {', '.join(failed)}"
    return None

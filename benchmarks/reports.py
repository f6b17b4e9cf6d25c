"""Benchmark reports: a terminal table, and JSON, Markdown, CSV and a latency chart on disk.

Examples:
    >>> table = format_table({"rows": [], "skipped": [{"row": "m.mlpackage on coreml", "reason": "CoreML needs macOS"}]})
    >>> print(table.splitlines()[0][:60])
    model  prec  px  backend  device  batch  verified  cold s  e
    >>> print(table.splitlines()[1])
    skipped: m.mlpackage on coreml (CoreML needs macOS)
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from cellsdk._io import atomic_path, write_json, write_text
from cellsdk.benchmarks.stats import BUSY_CORES, NOISY_SPREAD
from cellsdk.errors import BackendNotInstalledError

__all__ = ["format_table", "latency_scale", "outside_share", "write_reports"]

_COLUMNS = ("model", "prec", "px", "backend", "device", "batch", "verified", "cold s", "e2e p50", "e2e p95",
            "model p50", "outside %", "img/s", "CPU ms/img", "J/img", "peak MB", "GPU MB", "size MB", "acc %",
            "x eager", "/ bare",
            "conditions", "target", "result")
_SHORT_VERIFIED = {"passed": "passed", "failed": "FAILED", "not verified on this platform": "n/v", "unknown": "none",
                   "reference": "ref"}


def _cells(row: dict[str, Any]) -> list[str]:
    def num(value: Any, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    verified = _SHORT_VERIFIED.get(str(row.get("verified")), str(row.get("verified") or "-"))
    if not row.get("ok"):
        return [row["model"], row["precision"], "-", row["backend"], row["device"], str(row["batch"]), verified,
                *["-"] * (len(_COLUMNS) - 8), f"ERROR {row.get('error', '')}"]
    conditions = ",".join(part.split(" ")[0] for part in str(row.get("conditions", "-")).split(", "))
    result = row["status"] + (" (unverified)" if row.get("status_reason") else "")
    model_p50 = row["model_only"]["p50_ms"] if "model_only" in row else None
    return [
        row["model"], row["precision"], str(row.get("input_size", "-")), row["backend"], row["device"],
        str(row["batch"]), verified, num(row.get("cold_start_s"), ".2f"), num(row["e2e"]["p50_ms"], ".2f"),
        num(row["e2e"]["p95_ms"], ".2f"), num(model_p50, ".2f"), num(outside_share(row), ".0f"),
        num(row["e2e"]["throughput_ips"], ".0f"),
        num(row["cpu_seconds_per_image"] * 1e3 if isinstance(row.get("cpu_seconds_per_image"), (int, float))
            else None, ".2f"),
        num(row.get("joules_per_image"), ".3f") if row.get("joules_per_image") is not None else "n/a",
        num(row.get("peak_memory_mb"), ".0f"),
        num(row.get("gpu_memory_mb"), ".0f"), num(row.get("size_mb"), ".2f"),
        num(row["accuracy"] * 100 if "accuracy" in row else None, ".2f"),
        num(row.get("speedup_vs_eager"), ".2f"), num(row.get("vs_bare"), ".3f"), conditions,
        f"<{row['target_ms']:g} ms" if row.get("target_ms") else "-", result,
    ]


def outside_share(row: dict[str, Any]) -> float | None:
    """Per cent of the end-to-end p50 spent outside the runtime call: reading, decoding, preprocessing, results.

    On a GPU the runtime call includes the copies to and from the GPU.

    Examples:
        >>> outside_share({"ok": True, "e2e": {"p50_ms": 8.0}, "model_only": {"p50_ms": 2.0}})
        75.0
    """
    if not row.get("ok") or "model_only" not in row or not row["e2e"]["p50_ms"]:
        return None
    return max(0.0, 100.0 * (1.0 - row["model_only"]["p50_ms"] / row["e2e"]["p50_ms"]))


def _notes(report: dict[str, Any]) -> list[str]:
    """A line per row whose verification failed or whose measurement conditions were not ok, and per TensorRT row."""
    lines = []
    for row in report["rows"]:
        name = f"{row['model']} {row['device']} b{row['batch']}"
        if row.get("ok") and "cold_start_cached_s" in row:
            lines.append(f"{name}: cold start {row['cold_start_s']:.2f} s building the TensorRT engine, "
                         f"{row['cold_start_cached_s']:.2f} s reusing it from the engine cache "
                         f"({row.get('engine_cache_mb', 0):.1f} MB)")
        elif row.get("cold_start_cached_error"):
            lines.append(f"{name}: loading from the TensorRT engine cache failed: {row['cold_start_cached_error']}")
        if row.get("status_reason"):
            lines.append(f"{name}: FAIL because {row['status_reason']} (see its manifest; its speed is shown "
                         "for information)")
        if row.get("conditions") not in (None, "ok", "-"):
            lines.append(f"{name}: {row['conditions']}: its latencies are not reliable; re-run on an idle machine")
    return lines


def _table_rows(report: dict[str, Any]) -> list[list[str]]:
    return [_cells(row) for row in report["rows"]]


def format_table(report: dict[str, Any]) -> str:
    """Rows as an aligned text table (latencies in ms), then the skipped rows with their reasons.

    Examples:
        >>> print(format_table(run_benchmark(["model.int8.onnx"], BenchConfig(batches=(1,)))))  # doctest: +SKIP
    """
    rows = [list(_COLUMNS), *_table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 5 else cell.rjust(widths[i]) for i, cell in enumerate(r)).rstrip()
             for r in rows]
    grouped: dict[str, list[str]] = {}
    for skip in report.get("skipped", []):  # one line per reason: a missing GPU skips every artefact the same way
        grouped.setdefault(skip["reason"], []).append(skip["row"])
    lines += [f"skipped: {', '.join(rows)} ({reason})" for reason, rows in grouped.items()]
    lines += [f"note: {line}" for line in _notes(report)]
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    lines = ["# cellsdk-bench results", "",
             f"Machine: {machine.get('cpu')}, {machine.get('cores')} logical cores, "
             f"{' '.join(machine.get('flags', []))}, {machine.get('os')}; versions: "
             + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()), ""]
    if machine.get("nvidia"):
        lines += [_gpu_line(machine["nvidia"]), ""]
    lines += [
             "Latencies in ms per call (a call is one batch); e2e = read + decode + preprocess + infer; "
             "x eager = PyTorch eager fp32 e2e p50 / this row's (higher is faster); / bare = this row's e2e p50 / "
             "the bare runtime call's (cellsdk's overhead); model p50 = time inside the runtime call during those "
             "same calls (never above e2e; on a GPU it includes the copies to and from the GPU); outside % = the share "
             "of e2e p50 outside the runtime call (read, decode, preprocess, results); CPU ms/img = CPU time of the "
             "whole benchmark process, every thread, per image over the timed end-to-end calls (the seeds' energy "
             "question, measured: on a busy-waiting runtime it can exceed wall time x 1); J/img = CPU package "
             "energy per image from RAPL / powercap where the machine exposes it (n/a: not available, e.g. in a VM); "
             "GPU MB = GPU memory the row "
             "held; verified = the artefact's verification status (a FAILED artefact's "
             "row is FAIL whatever its speed); conditions = busy when other processes used more than "
             f"{BUSY_CORES} cores while the row was timed, noisy when e2e p95 > {NOISY_SPREAD} x p50.", "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _table_rows(report)]
    if report.get("skipped"):
        lines += ["", "Skipped:"] + [f"- {s['row']}: {s['reason']}" for s in report["skipped"]]
    if _notes(report):
        lines += ["", "Notes:"] + [f"- {line}" for line in _notes(report)]
    return "\n".join(lines) + "\n"


def _gpu_line(facts: dict[str, Any]) -> str:
    """``GPU: NVIDIA H100 80GB HBM3 (81559 MiB), driver 580.159.04 (CUDA 13.0); onnxruntime-gpu 1.31.1 ...``."""
    gpu = facts.get("gpu") or {}
    parts = [f"GPU: {gpu.get('name', 'unknown (no NVML)')}"
             + (f" ({gpu['memory_total_mb']} MiB)" if gpu.get("memory_total_mb") else "")
             + (f", driver {gpu['driver']}" if gpu.get("driver") else "")
             + (f" (CUDA {gpu['cuda_driver']})" if gpu.get("cuda_driver") else "")]
    ort = facts.get("onnxruntime")
    if ort:
        parts.append(f"{ort['package']} {ort['version']}" + (f" built for CUDA {ort['cuda']}" if ort.get("cuda") else "")
                     + (f", TensorRT {ort['tensorrt_major']}" if ort.get("tensorrt_major") else ""))
    if facts.get("torch_cuda"):
        parts.append(f"torch built for CUDA {facts['torch_cuda']}, cuDNN {facts.get('torch_cudnn')}")
    note = facts.get("memory_note")
    return "; ".join(parts) + "." + (f" {note}." if note else "")


def _csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    writer.writerows(_table_rows(report))
    return buffer.getvalue()


def latency_scale(rows: list[dict[str, Any]]) -> str:
    """``log`` when the slowest row is over 20x the fastest (one eager row would squash the rest), else ``linear``.

    Examples:
        >>> latency_scale([{"e2e": {"p50_ms": 2.0}}, {"e2e": {"p50_ms": 200.0}}])
        'log'
    """
    values = [r["e2e"]["p50_ms"] for r in rows]
    return "log" if values and min(values) > 0 and max(values) > 20 * min(values) else "linear"


def _chart(report: dict[str, Any], path: Path) -> None:
    from cellsdk.plots import pyplot

    plt = pyplot()
    rows = [r for r in report["rows"] if r.get("ok") and r["batch"] == min(x["batch"] for x in report["rows"])]
    if not rows:
        return
    names = [f"{'PyTorch eager fp32' if r['backend'] == 'pytorch-eager' else r['model']} "
             f"@{r.get('input_size', '?')}px ({r['device']})" for r in rows]  # unique per bar
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    ax.barh(names, [r["e2e"]["p50_ms"] for r in rows], label="e2e p50")
    ax.scatter([r["e2e"]["p95_ms"] for r in rows], names, color="black", marker="|", s=200, label="e2e p95", zorder=3)
    targets = {r["target_ms"] for r in rows if r.get("target_ms")}
    for target in targets:
        ax.axvline(target, color="red", linestyle="--", label=f"target {target:g} ms")
    ax.set_xscale(latency_scale(rows))
    ax.set_xlabel(f"ms per image, batch {rows[0]['batch']}" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    ax.set_title("end-to-end latency per backend / precision")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_reports(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``results.csv`` and ``latency.png`` into ``out_dir``.

    Examples:
        >>> sorted(write_reports(report, "runs/bench"))  # doctest: +SKIP
        ['csv', 'json', 'md', 'png']
    """
    out = Path(out_dir)
    files = {"json": write_json(out / "results.json", report), "markdown": write_text(out / "results.md", _markdown(report)),
             "csv": write_text(out / "results.csv", _csv(report))}
    try:
        _chart(report, out / "latency.png")
        files["chart"] = out / "latency.png"
    except BackendNotInstalledError as err:  # a device with only the runtime still gets the tables
        report.setdefault("notes", []).append(f"no latency chart: {err}")
    return files

"""Throughput over a folder: images/s, CPU use and peak memory of every way cellsdk runs a large job.

``cellsdk-bench --throughput DIR`` runs, each in its own process and one after another on the same image list:

- ``reference``: the hand-written pipeline in ``benchmarks/reference_pipeline.py`` (thread-pool decode + batched
  ONNX Runtime, no cellsdk), at every split of the cores between decoding threads and the runtime's threads;
- ``local``: ``cellsdk predict --from-list LIST --out results.csv`` (the pipelined engine, the OOD guard and the
  result file included) at the same splits, its default split, and its default split with ``--ood off`` (the work
  the reference does, no more: the guard's cost is the difference);
- ``ray``: ``cellsdk predict --engine ray --actors N`` for each N asked for (a local Ray cluster started for the
  job, and its start-up, included: whole-process times, like every row).

Every configuration runs ``rounds`` times, interleaved with the others, and the report gives medians. Every row
is a whole-process wall time (start-up and model load included) and the machine's CPU busy share over
it (``/proc/stat``: every process, Ray's workers too); peak memory is the main process's high-water mark. Each
row's labels are compared with the reference's. The report says each engine's best images/s as a ratio of the
reference's best, and of its default split.

Examples:
    >>> config = ThroughputConfig(folder="samples/pbc_raw", splits=((1, 1),), ray_actors=(), rounds=1)
    >>> report = run_throughput(config)  # doctest: +SKIP
    >>> report["ratios"]["local_best_vs_reference_best"]  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsdk._validate import require_int
from cellsdk.errors import ConfigError

__all__ = ["ThroughputConfig", "default_splits", "format_throughput", "run_throughput"]


def default_splits(cores: int | None = None) -> tuple[tuple[int, int], ...]:
    """(decoding threads, runtime threads) pairs worth trying on ``cores`` cores.

    Examples:
        >>> default_splits(2)
        ((1, 1), (1, 2), (2, 1), (2, 2))
    """
    cores = cores or os.cpu_count() or 2
    decode = sorted({1, max(1, cores // 2), max(1, cores - 1), cores})
    runtime = sorted({1, max(1, cores // 2), cores})
    return tuple((d, r) for d in decode for r in runtime)


@dataclass(frozen=True)
class ThroughputConfig:
    """What to measure.

    Attributes:
        folder: the images (walked as ``cellsdk predict`` walks a folder).
        model: an ONNX model (default: the shipped one); the reference pipeline needs ONNX Runtime.
        others: other artefacts of the same model (e.g. its OpenVINO int8 IR): each gets rows of the local engine
            at its default split, guard on and off, so the engines compare on the same images.
        splits: (decoding threads, runtime threads) pairs for the reference and the local engine.
        batch_size: images per runtime call, everywhere.
        ray_actors: actor counts for the Ray engine (empty: no Ray rows).
        repeat: run over the list repeated this many times, as distinct paths (symlinks: a job writes one row per
            distinct path), e.g. to show memory staying flat.
        rounds: how many times every configuration runs, interleaved (the report gives medians).
        timeout: seconds any one run may take.
    """

    folder: str
    model: str | None = None
    others: tuple[str, ...] = ()
    splits: tuple[tuple[int, int], ...] = field(default_factory=default_splits)
    batch_size: int = 32
    ray_actors: tuple[int, ...] = (1, 2)
    repeat: int = 1
    rounds: int = 3
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("repeat", self.repeat, minimum=1)
        require_int("rounds", self.rounds, minimum=1, maximum=100)
        for decode, runtime in self.splits:
            require_int("decoding threads", decode, minimum=1, maximum=256)
            require_int("runtime threads", runtime, minimum=1, maximum=256)
        for actors in self.ray_actors:
            require_int("ray actors", actors, minimum=1, maximum=1024)

    @classmethod
    def from_text(cls, folder: str, model: str | None = None, *, splits: str | None = None,
                  ray_actors: str = "1,2", **options: Any) -> ThroughputConfig:
        """The configuration from ``cellsdk-bench --throughput`` text: ``splits`` as ``1x1,1x2`` (DECODExRUNTIME;
        None: :func:`default_splits`), ``ray_actors`` as ``1,2`` or ``none``.

        Raises:
            ConfigError: text that is not such a list.

        Examples:
            >>> ThroughputConfig.from_text("images", splits="1x1,1x2", ray_actors="none").splits
            ((1, 1), (1, 2))
        """
        try:
            pairs = tuple(tuple(int(n) for n in part.strip().lower().split("x")) for part in splits.split(",")
                          if part.strip()) if splits else None
            actors = () if ray_actors.strip().lower() == "none" else tuple(
                int(n) for n in ray_actors.split(",") if n.strip())
        except ValueError:
            raise ConfigError(f"--splits {splits!r} / --ray-actors {ray_actors!r}: use e.g. --splits 1x1,1x2 "
                              "--ray-actors 1,2 (or none)") from None
        if pairs is not None and any(len(pair) != 2 for pair in pairs):
            raise ConfigError(f"--splits {splits!r}: each split is DECODExRUNTIME, e.g. 1x2")
        if pairs:
            options["splits"] = pairs
        return cls(folder=folder, model=model, ray_actors=actors, **options)


def _measure(command: list[str], timeout: float) -> dict[str, Any]:
    """Run ``command``; its wall time, the machine's CPU busy share, the process's peak memory, its output."""
    from cellsdk.benchmarks.worker import cpu_busy_seconds, vm_hwm_mb

    cores = os.cpu_count() or 1
    busy = cpu_busy_seconds()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        peak = None
        while process.poll() is None:
            peak = vm_hwm_mb(process.pid) or peak  # the high-water mark only grows: the last reading is the peak
            if time.perf_counter() - started > timeout:
                process.kill()
                process.wait()
                raise ConfigError(f"{' '.join(command[:4])} …: still running after {timeout:.0f} s; use fewer images")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        after = cpu_busy_seconds()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    cpu = None if busy is None or after is None else (after - busy) / (wall * cores)
    return {"returncode": process.returncode, "seconds": wall, "cpu_share": cpu, "peak_mb": peak,
            "stdout": stdout, "stderr": stderr}


def _cellsdk_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from cellsdk.cli import cli; sys.argv[0] = 'cellsdk'; cli()"]


def _reference_script() -> str:
    spec = importlib.util.find_spec("cellsdk.benchmarks.reference_pipeline")
    if spec is None or spec.origin is None:
        raise ConfigError("the reference pipeline (benchmarks/reference_pipeline.py) is not installed with cellsdk")
    return spec.origin


def _labels_from_rows(path: Path) -> list[str | None]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [row["label"] or None for row in csv.DictReader(handle)]
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["label"]).column("label").to_pylist()


@dataclass
class _Run:
    """One configuration: how to start it and where its labels land."""

    engine: str
    split: str
    command: list[str]
    labels_file: Path
    extra: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str | None] | None = None


def run_throughput(config: ThroughputConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every configuration in ``config``, ``config.rounds`` times interleaved; the report (medians).

    Raises:
        ConfigError: a bad option, a folder with no images, a model the reference cannot run, a run that failed.

    Examples:
        >>> report = run_throughput(ThroughputConfig(folder="samples/pbc_raw", ray_actors=()))  # doctest: +SKIP
    """
    from cellsdk.backends import backend_for_path
    from cellsdk.batch.distributed import ray_unavailable_reason
    from cellsdk.batch.engine import default_split
    from cellsdk.batch.jobs import iter_inputs
    from cellsdk.classifier import Classifier
    from cellsdk.platform.cpu import host_cpu

    classifier = Classifier.load(config.model)
    if classifier.backend_name != "onnxruntime":
        raise ConfigError(f"{classifier.path.name}: the throughput benchmark's reference runs ONNX Runtime; "
                          "give an .onnx model (or a conversion folder whose chosen artefact is one)")
    labels = list(classifier.labels)
    model = str(classifier.path)
    for other in config.others:
        if not Path(other).exists():
            raise ConfigError(f"{other}: no such model file or folder (the other artefacts come after the ONNX model)")
        backend_for_path(other)  # a file no runtime reads is refused now, not after the reference has run
    images = [Path(p).resolve() for p in iter_inputs([config.folder])]
    say = progress or (lambda message: None)
    reason = ray_unavailable_reason()
    skipped = [f"ray ({n} actors): {reason}" for n in config.ray_actors] if reason else []
    with tempfile.TemporaryDirectory(prefix="cellsdk-throughput-") as scratch:
        work = Path(scratch)
        # each repeat gets its own paths (symlinks to the images): a job writes one row per distinct path
        paths = [str(p) for p in images]
        for round_ in range(1, config.repeat):
            copies = work / f"repeat-{round_}"
            copies.mkdir()
            for index, image in enumerate(images):
                link = copies / f"{index:06d}{image.suffix}"
                link.symlink_to(image)
                paths.append(str(link))
        listed = work / "paths.txt"
        listed.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
        cellsdk = [*_cellsdk_command(), "predict", "--from-list", str(listed), "--model", model, "--batch-size",
                   str(config.batch_size)]
        runs: list[_Run] = []
        for decode, runtime in config.splits:
            out = work / f"ref-{decode}-{runtime}.txt"
            runs.append(_Run("reference", f"{decode} decode / {runtime} runtime",
                             [sys.executable, _reference_script(), model, "--list", str(listed), "--workers",
                              str(decode), "--threads", str(runtime), "--batch", str(config.batch_size),
                              "--labels-out", str(out)], out, {"decode_threads": decode, "runtime_threads": runtime}))
        for decode, runtime in config.splits:
            out = work / f"local-{decode}-{runtime}.csv"
            runs.append(_Run("local", f"{decode} decode / {runtime} runtime",
                             [*cellsdk, "--out", str(out), "--overwrite", "--quiet", "--workers", str(decode),
                              "--threads", str(runtime)], out, {"decode_threads": decode, "runtime_threads": runtime}))
        decode, runtime = default_split()
        out = work / "local-default.csv"
        runs.append(_Run("local", f"default ({decode} decode / {runtime} runtime)",
                         [*cellsdk, "--out", str(out), "--overwrite", "--quiet"], out,
                         {"decode_threads": decode, "runtime_threads": runtime, "default": True}))
        out = work / "local-default-noguard.csv"
        runs.append(_Run("local", f"default, --ood off ({decode} / {runtime})",
                         [*cellsdk, "--out", str(out), "--overwrite", "--quiet", "--ood", "off"], out,
                         {"decode_threads": decode, "runtime_threads": runtime, "guard": False}))
        for number, other in enumerate(config.others):
            name = f"{Path(other).name} ({backend_for_path(other).name})"
            for guard in (True, False):
                out = work / f"local-other{number}-{'guard' if guard else 'noguard'}.csv"
                runs.append(_Run("local", f"default, {name}{'' if guard else ', --ood off'}",
                                 [*_cellsdk_command(), "predict", "--from-list", str(listed), "--model", other,
                                  "--batch-size", str(config.batch_size), "--out", str(out), "--overwrite", "--quiet",
                                  *([] if guard else ["--ood", "off"])], out,
                                 {"decode_threads": decode, "runtime_threads": runtime, "model": other,
                                  **({} if guard else {"guard": False, "other_model": True})}))
        for actors in () if reason else config.ray_actors:
            out = work / f"ray-{actors}.parquet"
            runs.append(_Run("ray", f"{actors} actor{'s' if actors > 1 else ''} (1 thread each)",
                             [*cellsdk, "--engine", "ray", "--actors", str(actors), "--out", str(out), "--overwrite"],
                             out, {"actors": actors}))
        for round_number in range(1, config.rounds + 1):
            for run in runs:  # interleaved: a burst of load on a shared machine touches every configuration
                result = _measure(run.command, config.timeout)
                if result["returncode"] != 0:
                    tail = (result["stderr"].strip().splitlines() or ["no output"])[-1]
                    raise ConfigError(f"the {run.engine} run ({run.split}) failed: {tail}")
                run.results.append(result)
                if run.labels is None and run.labels_file.exists():
                    run.labels = (_labels_from_rows(run.labels_file) if run.engine != "reference" else
                                  [labels[int(i)] for i in run.labels_file.read_text().split()])
                say(f"round {round_number}: {run.engine:<9} {run.split:<28} "
                    f"{len(paths) / result['seconds']:>7.1f} img/s")
    reference = next((run.labels for run in runs if run.engine == "reference" and run.labels), None)
    rows = [_row(run, len(paths), reference) for run in runs]
    return {"machine": host_cpu().to_dict(), "cores": os.cpu_count(), "model": model, "folder": str(config.folder),
            "images": len(paths), "repeat": config.repeat, "rounds": config.rounds, "batch_size": config.batch_size,
            "rows": rows, "ratios": _ratios(rows), "skipped": skipped}


def _row(run: _Run, images: int, reference: list[str | None] | None) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in run.results)
    cpu = [r["cpu_share"] for r in run.results if r["cpu_share"] is not None]
    peak = [r["peak_mb"] for r in run.results if r["peak_mb"] is not None]
    agree = None
    if run.labels is not None and reference is not None and len(run.labels) == len(reference):
        agree = sum(a == b for a, b in zip(run.labels, reference, strict=True)) / max(len(reference), 1)
    return {"engine": run.engine, "split": run.split, "images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 1),
            "images_per_s_rounds": [round(images / r["seconds"], 1) for r in run.results],
            "cpu_percent": round(statistics.median(cpu) * 100, 1) if cpu else None,
            "peak_mb": round(max(peak), 1) if peak else None, "labels_match_reference": agree, **run.extra}


def _ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    def best(engine: str) -> float | None:
        rates = [r["images_per_s"] for r in rows if r["engine"] == engine]
        return max(rates) if rates else None

    reference = best("reference")
    default = next((r["images_per_s"] for r in rows if r["engine"] == "local" and r.get("default")), None)
    no_guard = next((r["images_per_s"] for r in rows if r["engine"] == "local" and r.get("guard") is False
                     and not r.get("other_model")), None)
    ratios: dict[str, float | None] = {}
    local_best = max((r["images_per_s"] for r in rows if r["engine"] == "local" and r.get("guard") is not False),
                     default=None)
    for name, value in (("local_best", local_best), ("local_default", default), ("local_default_no_guard", no_guard),
                        ("ray_best", best("ray"))):
        ratios[f"{name}_vs_reference_best"] = None if value is None or not reference else round(value / reference, 3)
    return ratios


def format_throughput(report: dict[str, Any]) -> str:
    """The report as a text table with the ratios under it.

    Examples:
        >>> print(format_throughput(report))  # doctest: +SKIP
    """
    header = f"{'engine':<10} {'split':<34} {'images':>6} {'s':>7} {'img/s':>7} {'cpu %':>6} {'peak MB':>8}  labels"
    lines = [f"{report['machine']['model']}, class {report['machine']['cpu_class']}, {report['cores']} cores; "
             f"{report['images']} images of {report['folder']}, batch {report['batch_size']}; whole-process times, "
             f"median of {report['rounds']} interleaved rounds", header]
    for row in report["rows"]:
        agree = row["labels_match_reference"]
        lines.append(f"{row['engine']:<10} {row['split']:<34} {row['images']:>6} {row['seconds']:>7.2f} "
                     f"{row['images_per_s']:>7.1f} {_cell(row['cpu_percent']):>6} {_cell(row['peak_mb']):>8}  "
                     f"{'-' if agree is None else f'{agree * 100:.2f}% = reference'}")
    for name, value in report["ratios"].items():
        if value is not None:
            lines.append(f"{name.replace('_', ' ')}: {value:.3f}")
    lines.extend(f"skipped: {reason}" for reason in report["skipped"])
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value}"


def write_throughput(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """``throughput.json`` and ``throughput.md`` in ``out_dir``."""
    from cellsdk._io import write_json, write_text

    out = Path(out_dir)
    return [write_json(out / "throughput.json", report),
            write_text(out / "throughput.md", "```\n" + format_throughput(report) + "\n```\n")]


if __name__ == "__main__":  # pragma: no cover - python -m cellsdk.benchmarks.throughput DIR
    from cellsdk.benchmarks._script import run_script

    def _main() -> int:
        report = run_throughput(ThroughputConfig(folder=sys.argv[1]), progress=print)
        print(format_throughput(report))
        print(json.dumps(report["ratios"]))
        return 0

    run_script(_main, prog="throughput")

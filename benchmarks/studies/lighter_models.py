"""Lighter and better models, measured one way: test accuracy, worst class, ECE, GMACs, int8 speed and CPU time.

    python -m cellsdk.benchmarks.studies.lighter_models --model "today's=models/bloodmnist_effnet_lite0_128.safetensors"
        --model "pruned 50 %=runs/p50/calibrated.safetensors" [--model NAME=CHECKPOINT ...]
        --data ../shared/data/bloodmnist_128 --data-cropped [--iterations 300] [--out DIR]

For each model (the first is the baseline of the ratios), as a user would run it, in its own processes:

1. ``cellsdk-eval CHECKPOINT --data DATA --split test``: accuracy, worst class recall and ECE of the fp32
   checkpoint;
2. GMACs and parameters, counted on one ``1 x 3 x S x S`` input (torch-pruning's counter);
3. ``cellsdk-convert CHECKPOINT --formats onnx --quantize int8 --calib DATA --verify-cpus native``: the gate
   verifies the int8 file on the **whole** validation split (a sample of a few hundred images cannot resolve its
   0.5-point / 2-point limits), on this machine's CPU class (emulating others is ``cellsdk-convert``'s business and
   takes minutes per model);
4. one ``cellsdk-bench`` run over every int8 file (batch 1, model-only and end-to-end p50, CPU-seconds and joules
   per image), so that the ratios compare one session on one machine.

The training record comes from each checkpoint's metadata (pruning: MACs before and after; distillation: the
teachers' architecture, input size and validation accuracy) and the run folder's ``history.json`` (seconds per
epoch). A step whose output is already in ``OUT/<name>/`` for the same checkpoint (sha256) is not run again, so
an interrupted report resumes. Results: ``OUT/lighter_models.json`` and ``.md``, with the CPU class.

Examples:
    >>> models = parse_models(["today's=models/m.safetensors", "p50=runs/p50/best.safetensors"])
    >>> [(m.name, m.slug) for m in models]
    [("today's", 'today_s'), ('p50', 'p50')]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsdk._io import sha256_file
from cellsdk.benchmarks._script import tool
from cellsdk.errors import ConfigError

__all__ = ["Entry", "format_report", "measure", "parse_models"]


@dataclass(frozen=True)
class Entry:
    """One model of the report: its name in the table, a file-name-safe slug and its checkpoint."""

    name: str
    slug: str
    checkpoint: Path


def parse_models(specs: list[str]) -> list[Entry]:
    """``NAME=CHECKPOINT`` strings as entries (distinct names, existing files).

    Raises:
        ConfigError: a spec without ``=``, a repeated name or a missing checkpoint.

    Examples:
        >>> parse_models(["p50"])
        Traceback (most recent call last):
        ...
        cellsdk.errors.ConfigError: --model p50: write NAME=CHECKPOINT, e.g. --model "pruned 50 %=runs/p50/best.safetensors"
    """
    entries: list[Entry] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--model {spec}: write NAME=CHECKPOINT, e.g. --model "
                              '"pruned 50 %=runs/p50/best.safetensors"')
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name.strip()).strip("_").lower() or "model"
        if any(e.slug == slug for e in entries):
            raise ConfigError(f"--model {spec}: the name {name!r} is used twice; give each model its own name")
        entries.append(Entry(name.strip(), slug, Path(path.strip())))
    return entries



def _run(command: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> int:
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    if code not in ok:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise ConfigError(f"{command[0]} exited {code}: {lines[-1] if lines else 'no output'} (log: {log})")
    return code


def _evaluate(entry: Entry, work: Path, data: str, cropped: bool, sha: str) -> dict[str, Any]:
    report = work / "eval" / "report.json"
    if not (report.exists() and json.loads(report.read_text()).get("checkpoint_sha256") == sha):
        shutil.rmtree(work / "eval", ignore_errors=True)
        _run([tool("cellsdk-eval"), str(entry.checkpoint), "--data", data, "--split", "test", "--out",
              str(work / "eval")] + (["--data-cropped"] if cropped else []), work / "eval.log")
    found = json.loads(report.read_text())
    worst = min(found["per_class"].items(), key=lambda item: item[1]["recall"])
    return {"images": found["n"], "accuracy": found["accuracy"], "macro_f1": found["macro_f1"],
            "worst_class": worst[0], "worst_recall": worst[1]["recall"], "ece": found["ece"]}


def _convert(entry: Entry, work: Path, data: str, cropped: bool, sha: str) -> dict[str, Any]:
    folder = work / "converted"
    manifest = folder / "manifest.json"
    if not (manifest.exists() and json.loads(manifest.read_text())["source_checkpoint"]["sha256"] == sha):
        _run([tool("cellsdk-convert"), str(entry.checkpoint), "--out", str(folder), "--formats", "onnx", "--quantize",
              "int8", "--calib", data, "--verify-cpus", "native"] + (["--data-cropped"] if cropped else []),
             work / "convert.log", ok=(0, 1))
    if not manifest.exists():
        raise ConfigError(f"cellsdk-convert wrote no manifest for {entry.checkpoint} (log: {work / 'convert.log'})")
    found = json.loads(manifest.read_text())
    int8 = next((a for a in found["artefacts"] if a["file"] == "model.int8.onnx"), None)
    if int8 is None or not (folder / "model.int8.onnx").is_file():
        raise ConfigError(f"cellsdk-convert made no model.int8.onnx for {entry.checkpoint} (see {manifest} and "
                          f"{work / 'convert.log'})")
    verification = int8.get("verification") or {}
    return {"int8_status": int8["status"], "int8_reasons": int8.get("reasons", []),
            "int8_mb": int8["size_bytes"] / 1e6, "int8_val_accuracy_change": verification.get("accuracy_change"),
            "int8_val_worst": verification.get("worst_class"),
            "int8_val_worst_change": verification.get("worst_recall_change"),
            "verified_on": verification.get("images"), "int8_file": str(folder / "model.int8.onnx")}


def _training(entry: Entry) -> dict[str, Any]:
    from cellsdk.training.checkpoint import load_checkpoint
    from cellsdk.training.pruning import count_macs

    model, metadata = load_checkpoint(entry.checkpoint)
    macs, params = count_macs(model, metadata.preprocessing.input_size)
    training = metadata.training or {}
    record: dict[str, Any] = {"arch": metadata.arch, "input_size": metadata.preprocessing.input_size,
                              "gmac": macs / 1e9, "params_m": params / 1e6,
                              "val_accuracy": metadata.reference_metrics.get("val_accuracy"),
                              "pruning": training.get("pruning"), "distillation": training.get("distillation")}
    history = entry.checkpoint.parent / "history.json"
    if history.exists():
        epochs = json.loads(history.read_text())
        record["epochs"] = len(epochs)
        record["train_seconds"] = sum(e.get("seconds", 0.0) for e in epochs)
    return record


def measure(entries: list[Entry], data: str, *, cropped: bool, out: Path, iterations: int = 300,
            progress: Any = None) -> dict[str, Any]:
    """Evaluate, count, convert and benchmark every entry; the report (also written to ``out``).

    Examples:
        >>> report = measure(parse_models(["a=runs/a/best.safetensors"]), "data", cropped=True,
        ...                  out=Path("/tmp/lm"))  # doctest: +SKIP
    """
    from cellsdk.platform.cpu import host_cpu

    missing = [str(e.checkpoint) for e in entries if not e.checkpoint.is_file()]
    if missing:  # before anything is written
        raise ConfigError(f"{', '.join(missing)}: no such checkpoint; train or prune it first")
    rows = []
    bench_dir = out / "int8_files"
    shutil.rmtree(bench_dir, ignore_errors=True)
    bench_dir.mkdir(parents=True)
    for entry in entries:
        work = out / entry.slug
        work.mkdir(parents=True, exist_ok=True)
        sha = sha256_file(entry.checkpoint)
        row: dict[str, Any] = {"model": entry.name, "key": entry.slug, "checkpoint": str(entry.checkpoint),
                               "sha256": sha}
        row.update(_training(entry))
        row.update(_evaluate(entry, work, data, cropped, sha))
        row.update(_convert(entry, work, data, cropped, sha))
        shutil.copyfile(row["int8_file"], bench_dir / f"{entry.slug}.int8.onnx")  # the verdict travels inside it
        rows.append(row)
        if progress:
            progress(f"{entry.name}: test {row['accuracy']:.2%}, int8 {row['int8_status']}")
    bench_out = out / "bench"
    _run([tool("cellsdk-bench"), *[str(bench_dir / f"{e.slug}.int8.onnx") for e in entries], "--device", "cpu",
          "--batch", "1", "--iterations", str(iterations), "--no-eager", "--quiet", "--out", str(bench_out)],
         out / "bench.log", ok=(0, 1))
    timed = {Path(r["path"]).name.removesuffix(".int8.onnx"): r
             for r in json.loads((bench_out / "results.json").read_text())["rows"]}
    for row in rows:
        found = timed.get(row["key"], {})
        row["model_p50_ms"] = (found.get("model_only") or {}).get("p50_ms")
        row["e2e_p50_ms"] = (found.get("e2e") or {}).get("p50_ms")
        row["cpu_ms_per_image"] = None if found.get("cpu_seconds_per_image") is None else \
            found["cpu_seconds_per_image"] * 1e3
        row["joules_per_image"] = found.get("joules_per_image")
        row["energy"] = found.get("energy")
    base = rows[0]
    for row in rows:
        row["speedup"] = (base["model_p50_ms"] / row["model_p50_ms"]) if row["model_p50_ms"] else None
        row["mac_ratio"] = row["gmac"] / base["gmac"]
    cpu = host_cpu()
    report = {"machine": {"model": cpu.model, "cpu_class": cpu.cpu_class}, "data": data, "iterations": iterations,
              "rows": rows}
    (out / "lighter_models.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "lighter_models.md").write_text(format_report(report))
    return report


def _teachers(row: dict[str, Any]) -> str:
    record = row.get("distillation") or {}
    teachers = record.get("teachers") or []
    return "; ".join(f"{t.get('arch')} {t.get('input_size')} px" for t in teachers) or "-"


def format_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (ratios to the first row) and one line per int8 verdict.

    Examples:
        >>> row = {"model": "a", "accuracy": 0.99, "worst_class": "ig", "worst_recall": 0.97, "ece": 0.002,
        ...        "gmac": 0.12, "mac_ratio": 1.0, "params_m": 3.4, "int8_mb": 4.8, "int8_status": "passed",
        ...        "model_p50_ms": 1.6, "speedup": 1.0, "cpu_ms_per_image": 6.8, "joules_per_image": None}
        >>> print(format_report({"machine": {"model": "EPYC", "cpu_class": "x86-64-avx2"}, "rows": [row]}), end="")
        ... # doctest: +ELLIPSIS
        EPYC, CPU class x86-64-avx2; test = the test split of ?...
        | a | 99.00 | ig 97.00 | 0.20 | 0.120 | 1.00 | 3.40 | 4.80 | passed | 1.600 | 1.00 | 6.80 | n/a | - |
    """
    lines = [f"{report['machine']['model']}, CPU class {report['machine']['cpu_class']}; test = the test split of "
             f"{report.get('data', '?')} (fp32 checkpoint); int8 = the portable ONNX recipe, verified on the whole "
             "val split, one `cellsdk-bench` run (batch 1)", "",
             "| model | test acc % | worst class recall % | ECE % | GMAC | x MACs | M params | int8 MB | int8 gate | "
             "int8 model-only p50 ms | x faster | CPU ms / image | J / image | teachers |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['accuracy'] * 100:.2f} | {row['worst_class']} {row['worst_recall'] * 100:.2f} "
            f"| {row['ece'] * 100:.2f} | {row['gmac']:.3f} | {row['mac_ratio']:.2f} | {row['params_m']:.2f} "
            f"| {row['int8_mb']:.2f} | {row['int8_status']} | {num(row['model_p50_ms'], '.3f')} "
            f"| {num(row['speedup'], '.2f')} | {num(row['cpu_ms_per_image'], '.2f')} "
            f"| {num(row['joules_per_image'], '.4f') if row.get('joules_per_image') is not None else 'n/a'} "
            f"| {_teachers(row)} |")
    failed = [row for row in report["rows"] if row["int8_status"] != "passed"]
    if failed:
        lines.append("")
        lines += [f"- {row['model']}: int8 {row['int8_status']}: {'; '.join(row.get('int8_reasons') or [])}"
                  for row in failed]
    return "\n".join(lines) + "\n"


def main() -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="lighter_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--data", required=True, help="a split image folder (train / val / test) or .npz")
    parser.add_argument("--data-cropped", action="store_true")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", default="lighter_models")
    args = parser.parse_args()
    report = measure(parse_models(args.model), args.data, cropped=args.data_cropped, out=Path(args.out),
                     iterations=args.iterations, progress=print)
    print(format_report(report), end="")
    print(f"wrote {Path(args.out) / 'lighter_models.json'} and .md")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="lighter_models")

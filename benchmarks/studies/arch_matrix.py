"""Which timm architectures go end to end: train a little, convert to every format and precision, verify.

``python -m cellsdk.benchmarks.studies.arch_matrix --data DATA [--archs a,b,...] [--input-size 64] [--out DIR]``
(``--formats litert,executorch --merge RESULTS.json``: only those formats, their cells added to an earlier report's
rows; each architecture is trained again for them, four steps as before)

Each architecture runs as a new user would run it, in its own processes (a crash stays in its row):
``cellsdk-train DATA --arch A --pretrained none --epochs 1 --max-steps 4 --input-size N --data-cropped``, then
``cellsdk-convert best.safetensors --formats all --quantize fp16,int8 --verify-cpus native --no-guard`` with a
gate wide enough for a barely trained model (accuracy and recall drops of 100 points; the int8 agreement
and logit-cosine criteria stay at their defaults). A row records, per artefact, ``passed``, ``failed``
(with the gate's reasons), ``skipped`` (with the toolchain's reason) or ``not verified on this platform``, plus
the wall times; a training or conversion that fails records its one-line error (or its crash).

Examples:
    >>> rows = run_matrix(MatrixConfig(data="samples/bloodmnist_128", archs=("resnet18",)))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsdk.benchmarks._script import tool

__all__ = ["ARCHITECTURES", "MatrixConfig", "format_matrix", "run_matrix"]

#: twenty architectures people put on edge devices: convolutional, mobile, hybrid and transformer families
ARCHITECTURES = (
    "mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientnet_b0",
    "tf_efficientnet_lite0", "resnet18", "resnet50", "regnety_002", "ghostnet_100", "lcnet_050",
    "convnext_atto", "repvit_m1", "fastvit_t8", "efficientvit_b0", "mobilevit_xxs", "edgenext_xx_small",
    "levit_128s", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "efficientvit_m0",
)

ARTEFACTS = ("model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx", "model.fp32.torchscript",
             "model.int8.torchscript", "model.fp32.xml", "model.fp16.xml", "model.int8.xml", "model.fp16.mlpackage",
             "model.int8.mlpackage", "model.fp32.tflite", "model.fp16.tflite", "model.int8.tflite", "model.fp32.pte",
             "model.int8.pte")


@dataclass(frozen=True)
class MatrixConfig:
    """The data, the architectures, the input size and where runs go."""

    data: str
    archs: tuple[str, ...] = ARCHITECTURES
    input_size: int = 64
    work: str | None = None
    timeout: float = 1800.0
    max_steps: int = 4
    eval_limit: int | None = None
    formats: str = "all"



def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _one(arch: str, config: MatrixConfig, work: Path) -> dict[str, Any]:
    run, out = work / arch / "run", work / arch / "converted"
    row: dict[str, Any] = {"arch": arch, "artefacts": {}}
    started = time.perf_counter()
    train = subprocess.run([tool("cellsdk-train"), config.data, "--out", str(run), "--arch", arch, "--pretrained",
                            "none", "--epochs", "1", "--max-steps", str(config.max_steps), "--batch-size", "16", "--input-size",
                            str(config.input_size), "--data-cropped", "--quiet"],
                           capture_output=True, text=True, timeout=config.timeout)
    row["train_seconds"] = round(time.perf_counter() - started, 1)
    if train.returncode != 0:
        crashed = train.returncode < 0
        row["train"] = (f"crashed (signal {-train.returncode})" if crashed else "refused") + \
            f": {_last_line(train.stderr) or _last_line(train.stdout)}"
        row["left_behind"] = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
        return row
    notes = [line for line in train.stderr.splitlines() if "not channels-last" in line or "img_size" in line]
    row["train"] = "ok" + (f" ({notes[0].strip()})" if notes else "")
    started = time.perf_counter()
    convert = subprocess.run([tool("cellsdk-convert"), str(run / "best.safetensors"), "--out", str(out),
                              "--formats", config.formats, "--quantize", "fp16,int8", "--calib", config.data, "--data-cropped",
                              "--calib-samples", "64", "--verify-cpus", "native", "--no-guard",
                              "--max-accuracy-drop", "100", "--max-recall-drop", "100", "--allow-regression", "--quiet",
                              *(["--eval-limit", str(config.eval_limit)] if config.eval_limit else [])],
                             capture_output=True, text=True, timeout=config.timeout)
    row["convert_seconds"] = round(time.perf_counter() - started, 1)
    manifest = out / "manifest.json"
    if convert.returncode != 0 or not manifest.is_file():
        row["convert"] = f"error: {_last_line(convert.stderr) or _last_line(convert.stdout)}"
        return row
    row["convert"] = "ok"
    row["artefacts"] = _cells(manifest)
    return row


def _cells(manifest: Path) -> dict[str, Any]:
    """One matrix cell per artefact of a cellsdk-convert manifest."""
    cells = {}
    for entry in json.loads(manifest.read_text())["artefacts"]:
        verification = entry.get("verification") or {}
        cells[entry["file"]] = {
            "status": entry["status"], "reasons": entry.get("reasons") or [],
            "agreement": verification.get("top1_agreement"), "logit_cosine": verification.get("logit_cosine"),
            "max_logit_diff": verification.get("max_logit_diff")}
    return cells


def collect(work: Path, config: MatrixConfig) -> dict[str, Any]:
    """The report of an interrupted run from its work folder: a row for every architecture whose conversion
    finished (its manifest written), with the conversion's own duration; the others are left out.

    Examples:
        >>> collect(Path("/nonexistent"), MatrixConfig(data="d", archs=("x",)))["rows"]
        []
    """
    rows = []
    for arch in config.archs:
        manifest = work / arch / "converted" / "manifest.json"
        if not manifest.is_file():
            continue
        seconds = json.loads(manifest.read_text()).get("seconds")
        rows.append({"arch": arch, "train": "ok", "convert": "ok", "artefacts": _cells(manifest),
                     "convert_seconds": round(seconds, 1) if seconds else None})
    return _report(config, rows)


def run_matrix(config: MatrixConfig, progress: Any = None) -> dict[str, Any]:
    """Run every architecture; a JSON-ready report.

    Examples:
        >>> report = run_matrix(MatrixConfig(data="samples/bloodmnist_128", archs=("test_efficientnet",)))  # doctest: +SKIP
    """
    work = Path(config.work) if config.work else Path(tempfile.mkdtemp(prefix="cellsdk-matrix-"))
    rows = []
    for arch in config.archs:
        shutil.rmtree(work / arch, ignore_errors=True)
        try:
            row = _one(arch, config, work)
        except subprocess.TimeoutExpired:
            row = {"arch": arch, "train": f"timed out after {config.timeout:.0f} s", "artefacts": {}}
        rows.append(row)
        if progress:
            progress(f"{arch}: train {row.get('train', '?')[:60]}, convert {row.get('convert', '-')[:60]}")
    return _report(config, rows)


def _report(config: MatrixConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report around ``rows``: this machine, the data and the run's settings."""
    from cellsdk.platform.cpu import host_cpu

    cpu = host_cpu()
    return {"machine": {"model": cpu.model, "cpu_class": cpu.cpu_class}, "data": config.data, "formats": config.formats,
            "input_size": config.input_size, "max_steps": config.max_steps, "eval_limit": config.eval_limit,
            "rows": rows}


def merge_reports(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` with ``later``'s artefact cells added to its rows (by architecture), later's conversion time
    and any failure of the later run recorded beside the row's own.

    Examples:
        >>> a = {"rows": [{"arch": "x", "artefacts": {"model.fp32.onnx": {"status": "passed"}}}]}
        >>> b = {"rows": [{"arch": "x", "convert": "ok", "convert_seconds": 9.0,
        ...                "artefacts": {"model.fp32.pte": {"status": "passed"}}}], "formats": "executorch"}
        >>> sorted(merge_reports(a, b)["rows"][0]["artefacts"])
        ['model.fp32.onnx', 'model.fp32.pte']
    """
    merged = json.loads(json.dumps(earlier))
    rows = {row["arch"]: row for row in merged["rows"]}
    for row in later["rows"]:
        target = rows.get(row["arch"])
        if target is None:
            merged["rows"].append(row)
            continue
        target["artefacts"].update(row.get("artefacts", {}))
        target.setdefault("later_runs", []).append({key: row.get(key) for key in (
            "train", "train_seconds", "convert", "convert_seconds") if key in row} | {"formats": later.get("formats")})
    return merged


_SHORT = {"passed": "pass", "failed": "FAIL", "skipped": "skip", "not verified on this platform": "n/v"}


def format_matrix(report: dict[str, Any]) -> str:
    """The matrix as Markdown: architecture x artefact, then every reason once.

    Examples:
        >>> print(format_matrix(report).splitlines()[0])  # doctest: +SKIP
    """
    header = "| architecture | train | s (train + convert) | " + " | ".join(
        a.replace("model.", "").replace(".mlpackage", ".mlp").replace(".torchscript", ".ts").replace(".tflite", ".tfl")
        for a in ARTEFACTS) + " |"
    lines = [f"{report['machine']['model']}, class {report['machine']['cpu_class']}; {report['input_size']} px; "
             f"{report['data']}; {report.get('max_steps', 4)} training steps of 16 images"
             + (f"; verified on {report['eval_limit']} images" if report.get("eval_limit") else ""),
             "", header, "|" + "---|" * (3 + len(ARTEFACTS))]
    later = sorted({str(run.get("formats")) for row in report["rows"] for run in row.get("later_runs", [])})
    if later:  # cells merged from later runs (--merge): their own four-step training, their own conversion
        lines[0] += (f"; the {', '.join(later)} cells come from a later run (each architecture trained again the "
                     "same way; its conversion seconds in parentheses)")
    reasons: dict[str, list[str]] = {}
    for row in report["rows"]:
        seconds = f"{row.get('train_seconds', 0)} + {row.get('convert_seconds', '-')}" + "".join(
            f" (+ {later.get('convert_seconds', '-')})" for later in row.get("later_runs", []))
        train = row.get("train", "?")
        train_cell = "ok" if train.startswith("ok") else train.split(":")[0]
        cells = []
        for name in ARTEFACTS:
            entry = row["artefacts"].get(name)
            if entry is None:
                cells.append("-")
                continue
            cells.append(_SHORT.get(entry["status"], entry["status"]))
            if entry["status"] in ("failed", "skipped") and entry["reasons"] and "no fp16 path" not in entry["reasons"][0]:
                reasons.setdefault(row["arch"], []).append(f"{name}: {'; '.join(entry['reasons'])[:240]}")
        if not train.startswith("ok") or (train != "ok" and "(" in train):
            reasons.setdefault(row["arch"], []).insert(0, f"training: {train}")
        if row.get("convert", "ok") != "ok":
            reasons.setdefault(row["arch"], []).append(f"conversion: {row['convert']}")
        for later in row.get("later_runs", []):
            if later.get("convert", "ok") != "ok" or not str(later.get("train", "ok")).startswith("ok"):
                reasons.setdefault(row["arch"], []).append(
                    f"{later.get('formats')} run: training {later.get('train')}, conversion {later.get('convert', '-')}")
        lines.append(f"| {row['arch']} | {train_cell} | {seconds} | " + " | ".join(cells) + " |")
    if reasons:
        lines += ["", "Reasons:"]
        for arch, items in reasons.items():
            lines += [f"- {arch}: {item}" for item in items]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cellsdk._io import write_json, write_text

    parser = argparse.ArgumentParser(prog="python -m cellsdk.benchmarks.studies.arch_matrix",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--work")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--eval-limit", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--formats", default="all")
    parser.add_argument("--merge", type=Path, help="an earlier arch_matrix.json whose rows gain these cells")
    parser.add_argument("--collect", action="store_true",
                        help="report an interrupted run from --work instead of running (the finished architectures)")
    args = parser.parse_args(argv)
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    config = MatrixConfig(data=args.data, archs=archs, input_size=args.input_size, work=args.work,
                          max_steps=args.max_steps, eval_limit=args.eval_limit, formats=args.formats)
    if args.collect and not args.work:
        parser.error("--collect needs --work")
    report = collect(Path(args.work), config) if args.collect else run_matrix(
        config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.merge:
        report = merge_reports(json.loads(args.merge.read_text()), report)
    print(format_matrix(report))
    if args.out:
        write_json(args.out / "arch_matrix.json", report)
        write_text(args.out / "arch_matrix.md", format_matrix(report) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="arch_matrix")

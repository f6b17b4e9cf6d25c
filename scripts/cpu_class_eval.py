"""Per-CPU-class evaluation of deployed models beside the fp32 checkpoint (the MODEL_CARD.md table).

Every model runs through ``cellsdk.Classifier`` on the same preprocessed images: natively on the whole
split, and under ``qemu-x86_64 -cpu MODEL`` (the worker cellsdk-convert's CPU-class gate uses) on a
stratified sample of it. The fp32 checkpoint (PyTorch) is evaluated on the same images each time.

    python scripts/cpu_class_eval.py runs/reference/converted/model.int8.onnx ... \\
        --checkpoint models/bloodmnist_effnet_lite0_128.safetensors --data ../shared/data/bloodmnist_128 \\
        --split test --data-cropped --cpus native,haswell,nehalem --emulated-images 600 --out runs/cpu_eval.json

Prints a markdown table; ``--out`` keeps every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cellsdk.classifier import Classifier
from cellsdk.converters.calibration import _stratified, evaluation_set
from cellsdk.converters.emulation import EMULATED, emulator_name, run_emulated
from cellsdk.converters.gate import reference_logits
from cellsdk.metrics import classification_report, softmax
from cellsdk.platform.cpu import host_cpu


def summary(targets: np.ndarray, logits: np.ndarray, labels: tuple[str, ...]) -> dict:
    report = classification_report(targets, softmax(logits.astype(np.float64)), labels)
    worst = min(report["per_class"], key=lambda k: report["per_class"][k]["recall"])
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "worst_class": worst,
            "worst_recall": report["per_class"][worst]["recall"],
            "recall": {k: v["recall"] for k, v in report["per_class"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-cropped", action="store_true")
    parser.add_argument("--cpus", default="native,haswell,nehalem")
    parser.add_argument("--emulated-images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from cellsdk.training import load_checkpoint

    model, metadata = load_checkpoint(args.checkpoint)
    images = evaluation_set(args.data, metadata, split=args.split, data_cropped=args.data_cropped)
    labels = metadata.labels
    print(f"{len(images)} {args.split} images; host {host_cpu().describe()}", file=sys.stderr)
    reference = reference_logits(model, images)
    sample = _stratified(images.targets, args.emulated_images, 0)
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "sample.npy"
        np.save(arrays, np.ascontiguousarray(images.arrays[sample]))
        jobs = []
        for path in args.models:
            for cpu in cpus:
                jobs.append((path, cpu))

        def run(job: tuple[Path, str]) -> dict:
            path, cpu = job
            started = time.perf_counter()
            options = {"precision": "f32"} if path.suffix == ".xml" and ".int8." not in path.name else {}
            if cpu == "native":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf = Classifier.load(path, device="cpu", **options)
                logits = np.concatenate([clf.raw_outputs(b) for b in images.batches(64)])
                index, cls, method = np.arange(len(images)), host_cpu().cpu_class, "native"
            else:
                out = Path(tmp) / f"{path.name}.{cpu}.npz"
                error = run_emulated(path, options, cpu, arrays, out)
                if error:
                    return {"model": str(path), "cpu": cpu, "error": error}
                with np.load(out) as data:
                    logits, info = data["logits"], json.loads(str(data["info"]))
                index, cls, method = sample, info["cpu_class"], f"{emulator_name(cpu)} -cpu {EMULATED[cpu][0]}"
            row = {"model": str(path), "cpu": cpu, "cpu_class": cls, "method": method, "images": len(index),
                   "seconds": round(time.perf_counter() - started, 1),
                   "artefact": summary(images.targets[index], logits, labels),
                   "fp32": summary(images.targets[index], reference[index], labels),
                   "top1_agreement": float((logits.argmax(1) == reference[index].argmax(1)).mean())}
            print(f"done {path.name} {cpu} in {row['seconds']} s", file=sys.stderr)
            return row

        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            rows = list(pool.map(run, jobs))
    print("| model | CPU (class) | images | acc % | Δ fp32 | agreement with fp32 % | macro-F1 % | "
          "worst class recall % | largest class recall drop vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {Path(r['model']).name} | {r['cpu']} | - | not run: {r['error']} ||||||")
            continue
        a, f = r["artefact"], r["fp32"]
        drop = {k: a["recall"][k] - f["recall"][k] for k in a["recall"]}
        worst_drop = min(drop, key=drop.get)
        print(f"| {Path(r['model']).name} | {r['cpu']} ({r['cpu_class']}) | {r['images']} | "
              f"{a['accuracy'] * 100:.2f} | {(a['accuracy'] - f['accuracy']) * 100:+.2f} | "
              f"{r['top1_agreement'] * 100:.2f} | {a['macro_f1'] * 100:.2f} | "
              f"{a['worst_recall'] * 100:.2f} {a['worst_class']} | {drop[worst_drop] * 100:+.2f} {worst_drop} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"host": host_cpu().to_dict(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

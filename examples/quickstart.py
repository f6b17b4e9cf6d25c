"""Quickstart: the shipped blood-cell model, loaded, run, re-converted and benchmarked — no training.

1. ``Classifier.load()`` with no argument: the reference EfficientNet-Lite0 INT8 ONNX model that
   ships inside cellsdk (MODEL_CARD.md says how it was made and what it scores).
2. It classifies the repository's sample cells: 16 raw 360x363 microscope originals (the model
   crops their central 200 px itself, as its metadata says) and 32 BloodMNIST-128 test crops,
   and shows its out-of-distribution guard at work on altered copies of one sample (another
   stain, blur, over-exposure, a photograph that is not a cell). The same images then go through
   a large-job run (``cellsdk predict DIR --out results.csv``: the pipelined engine, one row per
   image, a per-class summary), which must give the same labels.
3. ``cellsdk-convert`` turns the shipped fp32 checkpoint (models/) into ONNX and OpenVINO models, fp32
   and int8, calibrated on the sample train images and verified class by class on the 32 sample
   validation images, natively and under one emulated CPU class (Haswell: AVX2 without VNNI). With 4
   images per class one flipped image moves a class's recall by 25 points: the verdicts here
   demonstrate the gate; MODEL_CARD.md has the verification on the full 1,712-image validation split.
4. ``cellsdk-bench`` times those artefacts end to end (read, decode, preprocess, infer) at batch 1
   against the 50 ms p95 target.

``--all`` runs the whole matrix instead: every format (ONNX, OpenVINO, TorchScript, CoreML, LiteRT,
ExecuTorch) at fp32, fp16 and int8, every default CPU class (Haswell and Nehalem emulated), every artefact
benchmarked, and ``cellsdk export --bioimageio`` packing the verified fp32 weights as a bioimage.io model
package, which bioimage.io's own test (``bioimageio test``) must pass and ``Classifier.load`` must run like the
shipped model.

Usage: python examples/quickstart.py [--all] [--out runs/quickstart] [--formats onnx,openvino] [--iterations 30]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cellsdk import Classifier
from cellsdk.batch.jobs import iter_inputs, path_key, run_job
from cellsdk.classifier import DEFAULT_MODEL
from cellsdk.datasets import load_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
CHECKPOINT = REPO / "models" / DEFAULT_MODEL.replace(".int8.onnx", ".safetensors")
#: what the main job converts by default: int8 ONNX and one more format (the full matrix: --all)
QUICK_FORMATS = "onnx,openvino"
#: the CPU classes the default run verifies on: this machine and one emulated class (--all: every default one)
QUICK_CPUS = "native,haswell"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--all", action="store_true", help="the whole matrix: every format and precision, every "
                        "default CPU class, the bioimage.io package")
    parser.add_argument("--formats", default=None, help="formats to convert to (default onnx,openvino; with --all "
                        "every one)")
    parser.add_argument("--iterations", type=int, default=30, help="timed runs per benchmark row")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # third-party INFO chatter stays off
    logging.getLogger("cellsdk").setLevel(logging.WARNING if args.quiet else logging.INFO)

    clf = Classifier.load()
    meta = clf.metadata
    print(f"loaded {clf}")
    print(f"  classes: {', '.join(meta.labels)}")
    print(f"  preprocessing: {meta.preprocessing.describe()}")
    report: dict = {"model": str(clf.path), "labels": list(meta.labels)}

    raw = load_dataset(SAMPLES / "pbc_raw").split("all")
    print(f"\nraw microscope originals ({len(raw)} images, 360x363 px):")
    correct = 0
    for path in raw.paths:
        prediction = clf.predict(path)
        truth = path.parent.name  # the class folder
        correct += prediction.label == truth
        mark = "ok " if prediction.label == truth else "XX "
        status = "" if prediction.ok else f"  [{prediction.status}]"
        print(f"  {mark}{path.relative_to(SAMPLES)}: {prediction.label} {prediction.confidence * 100:.1f} %{status}")
    report["raw_accuracy"] = correct / len(raw)
    print(f"  {correct}/{len(raw)} correct ({report['raw_accuracy'] * 100:.1f} %)")
    report["guard"] = show_guard(clf, list(raw.paths))
    report["job"] = batch_job(clf, {path_key(p): clf.predict(p).label for p in raw.paths}, args.out)
    report["service"] = serve_check({p: clf.predict(p).label for p in raw.paths})
    report["explain"] = explain_samples(clf, list(raw.paths), args.out / "explained")

    crops = load_dataset(SAMPLES / "bloodmnist_128").split("test")
    cropped = clf.with_preprocessing(meta.preprocessing.without_crop())  # these are already the 200 px crops
    predicted = [p.label for p in cropped.predict_batch(crops.paths)]
    hits = sum(p == path.parent.name for p, path in zip(predicted, crops.paths, strict=True))
    report["crops_accuracy"] = hits / len(crops)
    print(f"BloodMNIST-128 sample test crops: {hits}/{len(crops)} correct ({report['crops_accuracy'] * 100:.1f} %)")

    formats = args.formats or ("all" if args.all else QUICK_FORMATS)
    report["conversion"] = convert_and_verify(args.out / "converted", formats, args.quiet, whole=args.all)
    report["benchmark"] = benchmark([args.out / "converted", clf.path], args.out / "bench", args.iterations,
                                    args.quiet)
    if args.all:
        report["bioimageio"] = share_on_bioimageio(args.out / "converted", args.out / "cells.bioimageio.zip",
                                                   raw.paths)
    else:
        print("\nbioimage.io package: python examples/quickstart.py --all packs and tests one (cellsdk export "
              "--bioimageio)")
    return report


def share_on_bioimageio(converted: Path, out: Path, images: list[Path]) -> dict:
    """The verified fp32 weights as a bioimage.io package, tested by bioimage.io and run back by cellsdk."""
    import importlib.util

    if importlib.util.find_spec("bioimageio") is None or importlib.util.find_spec("bioimageio.core") is None:
        print("\nbioimage.io: bioimageio.core is not installed (pip install 'cellsdk[bioimageio]'); package skipped")
        return {"checked": False}
    from cellsdk.converters.bioimageio import export_bioimageio, test_package

    print("\nbioimage.io: packing the verified fp32 weights as a model package and running bioimageio test ...")
    result = export_bioimageio(converted, out)
    passed, summary = test_package(result.path)
    print(summary)
    package = Classifier.load(result.path)
    reference = Classifier.load(converted / "model.fp32.onnx")
    same = [package.predict(p).label == reference.predict(p).label for p in images]
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, weights {', '.join(result.weights)}); "
          f"bioimageio test {'passed' if passed else 'FAILED'}; Classifier.load(package) gives the fp32 ONNX's label "
          f"on {sum(same)}/{len(same)} sample originals")
    return {"checked": True, "path": str(result.path), "weights": list(result.weights), "passed": passed,
            "same_labels": all(same), "notes": list(result.notes)}


def batch_job(clf: Classifier, expected: dict[str, str | None], out: Path) -> dict:
    """The raw samples as a large job: a result file, a summary, and the labels ``predict`` gave one by one."""
    import csv

    summary = run_job(clf, iter_inputs([SAMPLES / "pbc_raw"]), out / "results.csv", overwrite=True, progress=False)
    with summary.out.open(newline="") as handle:
        rows = {row["path"]: row["label"] or None for row in csv.DictReader(handle)}
    same = rows == expected
    print(f"\nas a large job (cellsdk predict samples/pbc_raw --out {summary.out}):\n{summary.table()}")
    print(f"  {summary.rows} rows, labels {'identical to' if same else 'DIFFERENT from'} predict() one by one")
    return {"rows": summary.rows, "per_class": summary.per_class, "same_labels": same}


def explain_samples(clf: Classifier, paths: list[Path], out: Path) -> dict:
    """Where the model looked (torch-free class activation maps): an overlay per sample, each map the size of
    the raw image, explaining the predicted class, with its peak inside the crop the model saw."""
    out.mkdir(parents=True, exist_ok=True)
    sane = 0
    for path in paths:
        explanation = clf.explain(path)
        explanation.save(out / f"{path.stem}.{explanation.target}.png")
        left, top, right, bottom = explanation.box
        y, x = divmod(int(explanation.heatmap.argmax()), explanation.heatmap.shape[1])
        sane += (explanation.heatmap.shape[::-1] == explanation.image.size and explanation.target ==
                 max(explanation.prediction.probabilities, key=explanation.prediction.probabilities.get)
                 and left <= x < right and top <= y < bottom)
    print(f"\nexplanations (clf.explain, torch-free CAM): {len(paths)} overlays in {out}; {sane}/{len(paths)} maps "
          "the raw image's size, on the predicted class, peaking inside the model's crop")
    return {"images": len(paths), "sane": sane, "folder": str(out)}


def serve_check(expected: dict[Path, str | None]) -> dict:
    """The REST service (``cellsdk serve``) on a loopback port: every sample posted, labels as ``predict``'s;
    a non-image refused with a problem document; SIGTERM stops it cleanly."""
    import importlib.util
    import json
    import urllib.error
    import urllib.request

    from cellsdk.errors import ConfigError
    from cellsdk.serve.process import start_service

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        print("\nservice: not checked (pip install 'cellsdk[serve]'; scripts/setup.sh does)")
        return {"checked": False}
    try:
        service = start_service()
    except ConfigError as err:
        print(f"\nservice: {err}")
        return {"checked": True, "started": False, "same_labels": False}
    url = service.url
    labels, refused, error = {}, None, None
    try:
        for path in expected:
            request = urllib.request.Request(url + "v1/predict", data=path.read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=60) as answer:
                labels[path] = json.load(answer)["predictions"][0]["label"]
        try:
            urllib.request.urlopen(urllib.request.Request(url + "v1/predict", data=b"not an image", method="POST"))
        except urllib.error.HTTPError as err:
            refused = (err.code, err.headers.get("content-type"))
    except (OSError, ValueError, KeyError) as err:  # reported as a failed check, not a traceback
        error = f"{type(err).__name__}: {err}"
    finally:
        code = service.stop()
    same = labels == expected
    print(f"\nservice (cellsdk serve, {url}): {len(labels)} samples posted, labels "
          f"{'identical to' if same else 'DIFFERENT from'} predict(); a text body -> {refused}; "
          f"SIGTERM -> exit {code}")
    return {"checked": True, "started": True, "same_labels": same and error is None, "refused": list(refused or ()),
            "exit_code": code, "error": error}


def show_guard(clf: Classifier, paths: list[Path]) -> dict:
    """The guard keeps the sample originals and flags altered copies of them, each with its reason."""
    import numpy as np
    from PIL import Image

    from cellsdk.converters.shifts import apply_shift

    if clf.guard is None:
        print("\nthis model carries no OOD guard")
        return {"present": False}
    kept = sum(p.ok for p in clf.predict_batch(paths))
    print(f"\nOOD guard ({clf.guard.score.name}, threshold keeps {clf.guard.retention * 100:.0f} % of validation "
          f"images): {kept}/{len(paths)} sample originals answered with status ok")
    original = Image.open(paths[0]).convert("RGB")
    altered = {name: apply_shift(name, original) for name in ("hue_shift", "blur", "overexposed", "scale_2")}
    altered["noise (not a cell)"] = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (363, 360, 3), dtype=np.uint8))
    flagged = 0
    for name, image in altered.items():
        p = clf.predict(image)
        flagged += p.status == "out_of_distribution"
        reason = p.reasons[0] if p.reasons else ""
        print(f"  {name:<20}{p.label} {p.confidence * 100:.1f} %  -> {p.status}  {reason[:90]}")
    return {"present": True, "samples_kept": kept / len(paths), "altered_flagged": flagged / len(altered)}


def convert_and_verify(out: Path, formats: str, quiet: bool, *, whole: bool = False) -> dict:
    """The shipped fp32 checkpoint to ``formats`` at fp32 and int8 (``whole``: fp16 too, every default CPU class),
    through the verification gate."""
    from cellsdk.converters import ConvertConfig, convert, format_manifest_table
    from cellsdk.converters.targets import CpuTargets

    chosen = () if formats == "all" else tuple(f.strip() for f in formats.split(",") if f.strip())
    precisions = ("fp16", "int8") if whole else ("int8",)
    extra = {} if whole else {"cpu_targets": CpuTargets.parse(QUICK_CPUS)}
    config = ConvertConfig(formats=chosen, precisions=precisions, calib=str(SAMPLES / "bloodmnist_128"),
                           calib_samples=128, data_cropped=True, **extra)
    print(f"\nconverting {CHECKPOINT.relative_to(REPO)}: {'every format' if not chosen else ', '.join(chosen)} x "
          f"fp32 / {' / '.join(precisions)}, each artefact compared class by class with the fp32 checkpoint on the 32 "
          "sample validation images (the table: size, top-1 agreement, accuracy and its change, the class that lost "
          "most recall, latency, CPU classes checked, verdict) ...")
    result = convert(CHECKPOINT, out, config, progress=not quiet)
    print(format_manifest_table(result.manifest))
    cpus = result.manifest["cpu_targets"]
    print(f"CPU classes: each artefact's gate ran natively on this machine ({cpus['host']['cpu_class']}), and the "
          f"int8 ones also under {', '.join(t for t in cpus['requested'] if t != 'native') or 'no'} emulation "
          f"({'qemu-x86_64' if cpus['emulator'] else 'qemu-x86_64 missing: those classes are not verified'})")
    print(f"converted and verified in {result.manifest['seconds']:.1f} s; manifest in {out / 'manifest.json'}")
    return result.manifest


def benchmark(models: list[Path], out: Path, iterations: int, quiet: bool) -> dict:
    """Every artefact and the PyTorch eager reference, batch 1, gated on the 50 ms target."""
    from cellsdk.benchmarks import BenchConfig, format_table, run_benchmark, write_reports

    print("\nbenchmark: every artefact end to end at batch 1 (read + decode + preprocess + infer, one process per row) "
          "against the 50 ms p95 target; 'verified' is the artefact's verification status, 'conditions' flags rows "
          "measured while other processes used the CPU ...")
    report = run_benchmark(models, BenchConfig(batches=(1,), iterations=iterations, warmup=3), progress=not quiet)
    print(format_table(report))
    write_reports(report, out)
    print(f"benchmark: {len(report['rows'])} rows, {report['failed']} failed; reports in {out}")
    return report


def failures(report: dict) -> list[str]:
    """The checks of the run that failed, one sentence each (empty when everything passed)."""
    out = [f"{a['file']} failed verification: {'; '.join(a.get('reasons') or [])}"
           for a in report["conversion"]["artefacts"] if a["status"] == "failed"]
    if not report["job"]["same_labels"]:
        out.append("the large-job run (cellsdk.batch.jobs) gave other labels than predict() one image at a time")
    service = report.get("service") or {}
    if service.get("checked") and not (service["same_labels"] and service.get("exit_code") == 0
                                       and service.get("refused", [None])[0] == 415):
        out.append(f"the REST service (cellsdk serve) did not answer like predict(), refuse a non-image with 415, "
                   f"or stop cleanly: {service}")
    explain = report.get("explain") or {}
    if explain and explain["sane"] != explain["images"]:
        out.append(f"only {explain['sane']} of {explain['images']} explanations were the raw image's size, on the "
                   "predicted class and peaking inside the model's crop")
    guard = report.get("guard") or {}
    if guard.get("present") and (guard["samples_kept"] < 0.75 or guard["altered_flagged"] < 0.8):
        out.append(f"the OOD guard kept {guard['samples_kept'] * 100:.0f} % of the sample originals (expected >= 75 %) "
                   f"and flagged {guard['altered_flagged'] * 100:.0f} % of the altered copies (expected >= 80 %)")
    shared = report.get("bioimageio") or {}
    if shared.get("checked") and not (shared["passed"] and shared["same_labels"]):
        out.append("the bioimage.io package failed bioimageio test or Classifier.load(package) disagreed with the fp32 "
                   "ONNX it holds")
    if report["benchmark"]["failed"]:
        out.append(f"{report['benchmark']['failed']} benchmark row(s) failed: latency target missed, artefact failed "
                   "verification, or an error (the benchmark table's result column and notes say which)")
    return out


if __name__ == "__main__":
    problems = failures(main())
    for problem in problems:
        print(f"FAILED: {problem}")
    raise SystemExit(1 if problems else 0)

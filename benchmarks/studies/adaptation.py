"""What ``cellsdk adapt`` buys a new lab: accuracy before and after, with k labelled cells per class.

    python -m cellsdk.benchmarks.studies.adaptation CHECKPOINT --lab NAME=ADAPT_DIR:TEST_DIR [--lab ...]
        --replay DATA [--replay-cropped] [--pbc-test LABELS_CSV] [--k 5,10,20] [--set key=value ...]
        [--modes labelled,unlabelled,suggested] [--ablation] [--seeds 0]
        [--convert [--formats onnx] [--verify-cpus native]] [--out DIR]

For each lab and each k, the first k cells of each class of ``ADAPT_DIR`` (seeded shuffle) are linked into a
temporary folder and adapted with the preset recipe (``--set`` overrides its fields, e.g. ``--set
stain_normalise=true``); the adapted model is then scored on the lab's ``TEST_DIR`` (never used to adapt) and
on the PBC test originals (``--pbc-test``: the ``labels.csv`` of ``pbc_subset``, rows of its test split).
Without ``--convert`` the fp32 checkpoint is scored (PyTorch); with it, the INT8 ONNX artefact through
``Classifier.load`` (accuracy, balanced accuracy and share flagged by the guard, also on every other lab's test
cells: an unrelated lab should stay flagged). Wall times are reported with the CPU class. Results go to
``OUT/adaptation.json`` and a Markdown table.

``--modes``: ``labelled`` (the k cells only), ``unlabelled`` (plus the rest of ``ADAPT_DIR`` as unlabelled cells,
their labels hidden: ``adapt --unlabelled``), ``suggested`` (the k x classes cells picked by ``adapt --suggest``
from the whole of ``ADAPT_DIR`` instead of at random, labelled with their true labels, plus the rest unlabelled).
k = 0 runs the unlabelled cells alone. ``--ablation`` adds the unlabelled steps one by one (recalibrate, +
self-training, + the guard on pseudo-labels: everything) for the ``unlabelled`` mode.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.datasets import is_image
from cellsdk.platform.cpu import host_cpu

__all__ = ["folder_items", "link_subset", "parse_labs", "parse_overrides", "pbc_test_items", "score_artefact",
           "score_checkpoint"]


def link_subset(adapt_dir: Path, k: int, into: Path, seed: int = 0) -> Path:
    """``into/<class>/``: symlinks to the first ``k`` images of each class of ``adapt_dir`` (seeded shuffle).

    Examples:
        >>> link_subset(Path("labB/adapt"), 10, Path("/tmp/labB_k10"))  # doctest: +SKIP
        PosixPath('/tmp/labB_k10')
    """
    for folder in sorted(p for p in adapt_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if is_image(p))
        random.Random(seed).shuffle(files)
        target = into / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for path in files[:k]:
            (target / path.name).symlink_to(path.resolve())
    return into


def parse_labs(texts: list[str]) -> dict[str, tuple[Path, Path]]:
    """``--lab NAME=ADAPT_DIR:TEST_DIR`` options as ``{name: (adapt_dir, test_dir)}``.

    Examples:
        >>> parse_labs(["labB=labB/adapt:labB/test"])
        {'labB': (PosixPath('labB/adapt'), PosixPath('labB/test'))}
    """
    labs = {}
    for text in texts:
        name, _, dirs = text.partition("=")
        adapt_dir, _, test_dir = dirs.partition(":")
        labs[name] = (Path(adapt_dir), Path(test_dir))
    return labs


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """``--set KEY=JSON`` options as a dictionary of recipe fields.

    Examples:
        >>> parse_overrides(["lr=0.0003", "stain_normalise=true"])
        {'lr': 0.0003, 'stain_normalise': True}
    """
    return {key: json.loads(value) for key, _, value in (text.partition("=") for text in texts)}


def folder_items(test_dir: Path) -> list[tuple[Path, str]]:
    """``(image, label)`` for every image of a class-folder tree.

    Examples:
        >>> folder_items(Path("samples/pbc_raw"))[0][1]
        'basophil'
    """
    return [(p, p.parent.name) for p in sorted(test_dir.glob("*/*")) if is_image(p)]


def pbc_test_items(labels_csv: Path | None) -> list[tuple[Path, str]]:
    """``(image, label)`` for the PBC originals of the test split (``pbc_subset/labels.csv``); none without it.

    Examples:
        >>> pbc_test_items(None)
        []
    """
    if labels_csv is None:
        return []
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(labels_csv.parent / r["path"], r["class"]) for r in rows if r["bloodmnist_split"] == "test"]


def _summary(predicted: list[str], truth: list[str], flagged: list[bool] | None = None,
             known: set[str] | None = None) -> dict[str, Any]:
    """Accuracy with its 95 % interval, balanced accuracy and per-class recall; with ``known`` (the classes the lab's
    adapt set holds), the balanced accuracy counts those only and the others are reported apart (a model cannot
    learn a class it was never shown)."""
    right = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    classes = sorted(set(truth))
    from cellsdk.metrics import wilson_interval

    recall = {c: float(right[[t == c for t in truth]].mean()) for c in classes}
    out: dict[str, Any] = {"images": len(truth), "accuracy": float(right.mean()),
                           "accuracy_95ci": [round(v, 4) for v in wilson_interval(int(right.sum()), len(truth))],
                           "balanced_accuracy": float(np.mean([r for c, r in recall.items()
                                                               if known is None or c in known])),
                           "recall": recall}
    if known is not None:
        out["classes_never_shown"] = {c: {"recall": r, "cells": int(sum(t == c for t in truth))}
                                      for c, r in recall.items() if c not in known}
    if flagged is not None:
        kept = ~np.asarray(flagged)
        out["flagged"] = float(np.mean(flagged))
        out["accuracy_kept"] = float(right[kept].mean()) if kept.any() else None
    return out


def score_checkpoint(checkpoint: Path, items: list[tuple[Path, str]], known: set[str] | None = None) -> dict[str, Any]:
    """The fp32 checkpoint (PyTorch) on ``items``, with its own preprocessing.

    Examples:
        >>> score_checkpoint(Path("runs/labB/best.safetensors"), [(Path("cell.png"), "monocyte")])  # doctest: +SKIP
        {'images': 1, 'accuracy': 1.0, 'balanced_accuracy': 1.0}
    """
    import torch

    from cellsdk.preprocessing import preprocess
    from cellsdk.training.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    arrays = np.stack([preprocess(p, meta.preprocessing) for p, _ in items])
    with torch.inference_mode():
        indices = torch.cat([model(torch.from_numpy(arrays[i:i + 64])) for i in range(0, len(arrays), 64)]).argmax(1)
    return _summary([meta.labels[i] for i in indices.tolist()], [label for _, label in items], known=known)


def score_artefact(model: Path, items: list[tuple[Path, str]], known: set[str] | None = None) -> dict[str, Any]:
    """A deployed model (``Classifier.load``, guard on) on ``items``: accuracy, balanced accuracy, share flagged.

    Examples:
        >>> score_artefact(Path("runs/labB/converted/model.int8.onnx"), items)["flagged"]  # doctest: +SKIP
        0.02
    """
    from cellsdk import Classifier

    classifier = Classifier.load(model)
    predictions = classifier.predict_batch([p for p, _ in items])
    return _summary([p.label for p in predictions], [label for _, label in items], [not p.ok for p in predictions],
                    known=known)


def link_pool(adapt_dir: Path, labelled: Path | None, into: Path) -> Path:
    """``into/``: flat symlinks to every image of ``adapt_dir`` not linked in ``labelled`` (labels hidden).

    Examples:
        >>> link_pool(Path("labB/adapt"), Path("/tmp/labB_k10"), Path("/tmp/labB_pool"))  # doctest: +SKIP
        PosixPath('/tmp/labB_pool')
    """
    taken = {p.resolve() for p in labelled.glob("*/*")} if labelled is not None else set()
    into.mkdir(parents=True, exist_ok=True)
    for path in sorted(adapt_dir.glob("*/*")):
        if is_image(path) and path.resolve() not in taken:
            (into / f"{path.parent.name[:2]}_{path.name}").symlink_to(path.resolve())
    return into


def link_suggested(checkpoint: Path, adapt_dir: Path, n: int, into: Path, replay: Path, replay_cropped: bool,
                   seed: int) -> Path:
    """``into/<class>/``: the ``n`` cells ``adapt --suggest`` picks from the whole of ``adapt_dir``, each under its
    true label (the technician's answer).
    """
    from cellsdk.training.suggestion import suggest_for_checkpoint

    everything = link_pool(adapt_dir, None, into.with_name(into.name + "_all"))
    picked = suggest_for_checkpoint(checkpoint, everything, n, replay=replay, replay_cropped=replay_cropped,
                                    seed=seed)
    for path in picked.paths:
        real = path.resolve()
        (into / real.parent.name).mkdir(parents=True, exist_ok=True)
        (into / real.parent.name / real.name).symlink_to(real)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--lab", action="append", required=True, metavar="NAME=ADAPT_DIR:TEST_DIR")
    parser.add_argument("--replay", type=Path, required=True)
    parser.add_argument("--replay-cropped", action="store_true")
    parser.add_argument("--pbc-test", type=Path, default=None, help="pbc_subset's labels.csv")
    parser.add_argument("--k", default="5,10,20")
    parser.add_argument("--modes", default="labelled", help="labelled, unlabelled, suggested (comma-separated)")
    parser.add_argument("--ablation", action="store_true", help="unlabelled mode: each step added one by one")
    parser.add_argument("--seeds", default="0", help="seeds (comma-separated): the subset drawn and the recipe's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--unlabelled-set", dest="unlabelled_overrides", action="append", default=[],
                        metavar="KEY=JSON", help="UnlabelledConfig fields for the unlabelled and suggested modes")
    parser.add_argument("--convert", action="store_true")
    parser.add_argument("--formats", default="all", help="with --convert: formats to write (default every one)")
    parser.add_argument("--verify-cpus", default=None, help="with --convert: CPU classes to verify on (default: "
                        "cellsdk-convert's)")
    parser.add_argument("--out", type=Path, default=Path("runs/adaptation"))
    args = parser.parse_args()
    from cellsdk.training.adaptation import adapt
    from cellsdk.training.unlabelled import UnlabelledConfig

    labs = parse_labs(args.lab)
    overrides = parse_overrides(args.overrides)
    unlabelled_overrides = parse_overrides(args.unlabelled_overrides)
    pbc = pbc_test_items(args.pbc_test)
    convert_options: dict[str, Any] = {}
    if args.formats != "all":
        convert_options["formats"] = tuple(args.formats.split(","))
    if args.verify_cpus:
        from cellsdk.converters.targets import CpuTargets

        convert_options["cpu_targets"] = CpuTargets.parse(args.verify_cpus)
    cpu = host_cpu()
    rows: list[dict[str, Any]] = []
    steps = ["none", "recalibrate", "self_train", "guard"] if args.ablation else ["guard"]
    with tempfile.TemporaryDirectory() as scratch:
        for name, (adapt_dir, test_dir) in labs.items():
            known = {p.name for p in adapt_dir.iterdir() if p.is_dir()}
            classes = len(known)
            for seed in (int(v) for v in args.seeds.split(",")):
                for k in (int(v) for v in args.k.split(",")):
                    for mode in args.modes.split(","):
                        if (k == 0 and mode != "unlabelled") or (mode == "labelled" and k == 0):
                            continue
                        tag = f"{name}_k{k}_{mode}_s{seed}"
                        data = None
                        if k and mode == "suggested":
                            data = link_suggested(args.checkpoint, adapt_dir, k * classes, Path(scratch) / tag,
                                                  args.replay, args.replay_cropped, seed)
                        elif k:
                            data = link_subset(adapt_dir, k, Path(scratch) / tag, seed=seed)
                        pool = link_pool(adapt_dir, data, Path(scratch) / f"{tag}_pool") if mode != "labelled" \
                            else None
                        for step in (steps if pool is not None else ["-"]):
                            if pool is not None and step == "none" and not k:
                                continue
                            config = dataclasses.replace(UnlabelledConfig.ablation(step), **unlabelled_overrides) \
                                if pool is not None else None
                            out = args.out / (tag + (f"_{step}" if pool is not None and args.ablation else ""))
                            started = time.perf_counter()
                            result = adapt(args.checkpoint, data, out, replay=args.replay,
                                           replay_cropped=args.replay_cropped,
                                           unlabelled=pool if step != "none" else None, unlabelled_config=config,
                                           overrides={**overrides, "seed": seed}, convert=args.convert,
                                           convert_options=convert_options, progress=False)
                            seconds = time.perf_counter() - started
                            row: dict[str, Any] = {
                                "lab": name, "k": k, "mode": mode, "unlabelled_steps": step, "seed": seed,
                                "overrides": overrides, "unlabelled_overrides": unlabelled_overrides,
                                "seconds": round(seconds, 1),
                                "fine_tune_seconds": round(result.seconds, 1),
                                "labelled_per_class": {p.name: len(list(p.iterdir()))
                                                       for p in sorted(data.iterdir())} if data else {},
                                "unlabelled": len(list(pool.iterdir())) if pool is not None else 0}
                            if args.convert:
                                model = out / "converted" / "model.int8.onnx"
                                row["lab_test"] = score_artefact(model, folder_items(test_dir), known)
                                row["pbc_test"] = score_artefact(model, pbc) if pbc else None
                            else:
                                row["lab_test"] = score_checkpoint(result.checkpoint, folder_items(test_dir), known)
                                row["pbc_test"] = score_checkpoint(result.checkpoint, pbc) if pbc else None
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"cpu": cpu.to_dict(), "checkpoint": str(args.checkpoint), "rows": rows}
    (args.out / "adaptation.json").write_text(json.dumps(report, indent=1))
    print(f"on {cpu.model} ({cpu.cpu_class}); wrote {args.out / 'adaptation.json'}")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="adaptation")

"""Compare OOD scores on the development sets (the table of issue 11), with the fp32 checkpoint in PyTorch.

    python scripts/ood_study.py --checkpoint models/bloodmnist_effnet_lite0_128.safetensors \
        --data ../shared/data/bloodmnist_128 --ood runs/ood_sets --out runs/ood_study

Features and logits are computed once per image set and cached in ``--out``
(``features.npz``); every score variant is fitted on the train split, its
threshold set on val for 95 % retention, and measured on each development set
against ``in_distribution`` (the same PBC originals, unshifted): AUROC, FPR at
95 % TPR, and the share flagged at the val threshold. Writes ``table.md`` and
``study.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cellsdk.guard.scores import fit_score
from cellsdk.metrics import auroc, fpr_at_tpr
from cellsdk.preprocessing import preprocess


def _features(model, arrays: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from cellsdk.converters.heads import with_features

    wrapped = with_features(model)
    logits, feats = [], []
    with torch.inference_mode():
        for start in range(0, len(arrays), batch):
            out_logits, out_features = wrapped(torch.from_numpy(arrays[start:start + batch]))
            feats.append(out_features.numpy())
            logits.append(out_logits.numpy())
    return np.concatenate(logits).astype(np.float64), np.concatenate(feats).astype(np.float64)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ood", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-limit", type=int, default=None)
    args = parser.parse_args()
    import torch

    from cellsdk.converters.calibration import calibration_set, evaluation_set
    from cellsdk.training.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "features.npz"
    store: dict[str, np.ndarray] = dict(np.load(cache)) if cache.is_file() else {}

    def keep(name: str, arrays_fn, targets=None) -> None:
        if f"{name}_logits" in store:
            return
        arrays = arrays_fn()
        logits, feats = _features(model, arrays)
        store[f"{name}_logits"], store[f"{name}_features"] = logits, feats
        if targets is not None:
            store[f"{name}_targets"] = targets
        np.savez(cache, **store)
        print(f"{name}: {len(arrays)} images", flush=True)

    for split in ("train", "val", "test"):
        if f"{split}_logits" in store:
            continue
        if split == "train":
            images = calibration_set(args.data, meta, samples=args.train_limit or 10**9, split="train",
                                     data_cropped=True, force=True)
        else:
            images = evaluation_set(args.data, meta, split=split, data_cropped=True)
        keep(split, lambda images=images: images.arrays, images.targets)
    sets = [p.name for p in sorted(args.ood.iterdir()) if p.is_dir()]
    for name in sets:
        files = sorted(p for p in (args.ood / name).rglob("*") if p.is_file())
        keep(name, lambda files=files: np.stack([preprocess(f, meta.preprocessing) for f in files]))

    train_y = store["train_targets"]
    variants = {
        "msp": ("msp", {}), "energy": ("energy", {}),
        "mahalanobis (full 1280 d)": ("mahalanobis", {"dims": 1280}),
        "mahalanobis (128 d + residual)": ("mahalanobis", {"dims": 128}),
        "mahalanobis (64 d + residual)": ("mahalanobis", {"dims": 64}),
        "mahalanobis (32 d + residual)": ("mahalanobis", {"dims": 32}),
        "knn (1280 d, k=10, 2000 bank)": ("knn", {"dims": 1280, "bank_per_class": 250}),
        "knn (64 d, k=10, 2000 bank)": ("knn", {"dims": 64, "bank_per_class": 250}),
        "knn (128 d, k=10, 2000 bank)": ("knn", {"dims": 128, "bank_per_class": 250}),
    }
    shifted = [s for s in sets if s != "in_distribution"]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, (name, options) in variants.items():
        score = fit_score(name, store["train_features"], train_y, **options)
        s = {k: score.score(store[f"{k}_logits"], store[f"{k}_features"]) for k in ["val", "test", *sets]}
        threshold = float(np.quantile(s["val"], 0.95))
        row = {"_test_kept": float((s["test"] <= threshold).mean())}
        for k in shifted:
            row[k] = {"auroc": auroc(s["in_distribution"], s[k]), "fpr95": fpr_at_tpr(s["in_distribution"], s[k]),
                      "flagged": float((s[k] > threshold).mean())}
        row["_mean_auroc"] = float(np.mean([row[k]["auroc"] for k in shifted]))
        results[label] = row
        print(f"{label:<34} mean AUROC {row['_mean_auroc']:.3f}  test kept {row['_test_kept']:.3f}", flush=True)
    lines = ["| score | " + " | ".join(shifted) + " | mean AUROC |", "|---|" + "---|" * (len(shifted) + 1)]
    for label, row in results.items():
        cells = [f"{row[k]['auroc']:.3f} / {row[k]['fpr95']:.2f}" for k in shifted]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['_mean_auroc']:.3f} |")
    lines += ["", "AUROC / FPR at 95 % TPR against in_distribution (PBC test originals, unshifted)", "",
              "| score | " + " | ".join(shifted) + " | test kept |", "|---|" + "---|" * (len(shifted) + 1)]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[k]['flagged'] * 100:.1f} %" for k in shifted)
                     + f" | {row['_test_kept'] * 100:.1f} % |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

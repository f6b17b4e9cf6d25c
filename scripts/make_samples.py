"""Rebuild the shipped sample images from ../shared/data (run once; the output is committed).

samples/bloodmnist_128/{train,val,test}/<class>/NNNNN.jpg: the first images by index of
each class and split of ../shared/data/bloodmnist_128 (16 train, 4 val, 4 test per class).
samples/pbc_raw/<class>/*.jpg: the first 2 full-resolution originals of each class
whose BloodMNIST split is "test", from ../shared/data/pbc_subset.

Usage: python scripts/make_samples.py [SHARED_DATA]
"""

from __future__ import annotations

import csv
import shutil
import sys
from collections import defaultdict
from pathlib import Path

PER_SPLIT = {"train": 16, "val": 4, "test": 4}
RAW_PER_CLASS = 2


def main() -> None:
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
    out = Path(__file__).resolve().parents[1] / "samples"
    chosen: dict[tuple[str, str], list[str]] = defaultdict(list)
    with open(shared / "bloodmnist_128" / "manifest.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: (r["split"], r["class"], int(r["index"])))
    for row in rows:
        key = (row["split"], row["class"])
        if len(chosen[key]) < PER_SPLIT[row["split"]]:
            chosen[key].append(row["path"])
    for paths in chosen.values():
        for rel in paths:
            target = out / "bloodmnist_128" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / "bloodmnist_128" / rel, target)
    raw: dict[str, list[str]] = defaultdict(list)
    with open(shared / "pbc_subset" / "labels.csv", newline="") as handle:
        for row in sorted(csv.DictReader(handle), key=lambda r: r["path"]):
            if row["bloodmnist_split"] == "test" and len(raw[row["class"]]) < RAW_PER_CLASS:
                raw[row["class"]].append(row["path"])
    for paths in raw.values():
        for rel in paths:
            target = out / "pbc_raw" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / "pbc_subset" / rel, target)
    print(f"wrote {sum(map(len, chosen.values()))} 128 px images and {sum(map(len, raw.values()))} raw originals")


if __name__ == "__main__":
    main()

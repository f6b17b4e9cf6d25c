"""Make a class-folder view (symlinks) of the PBC originals whose BloodMNIST split is the one asked for.

The PBC subset's labels.csv gives every original image its BloodMNIST split
(bloodmnist_split), so the full-resolution originals of the test split can be
classified end to end (raw 360x363 JPEG -> 200 px centre crop -> model) with
`cellsdk-eval MODEL --data OUT --split all`. Each file is checked against
labels.csv's sha256 first.

Usage: python scripts/pbc_split_folder.py ../shared/data/pbc_subset runs/pbc_test [--split test]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pbc", type=Path, help="the pbc_subset folder (with labels.csv)")
    parser.add_argument("out", type=Path, help="folder to create (class/file symlinks)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    labels = args.pbc / "labels.csv"
    if not labels.is_file():
        sys.exit(f"error: {labels} not found; pass the pbc_subset folder that holds labels.csv")
    with labels.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["bloodmnist_split"] == args.split]
    if not rows:
        sys.exit(f"error: no rows of {labels} have bloodmnist_split == {args.split!r}")
    for row in rows:
        source = (args.pbc / row["path"]).resolve()
        if hashlib.sha256(source.read_bytes()).hexdigest() != row["sha256"]:
            sys.exit(f"error: {source} does not match its sha256 in labels.csv; restore the original file")
        link = args.out / row["class"] / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(source, link)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["class"]] = counts.get(row["class"], 0) + 1
    print(f"{len(rows)} {args.split} originals in {args.out}: "
          + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

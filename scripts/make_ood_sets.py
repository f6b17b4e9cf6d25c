"""Build the development out-of-distribution sets (see docs/ood_sets.md).

    python scripts/make_ood_sets.py --out runs/ood_sets \
        [--pbc ../shared/data/pbc_subset] [--bloodmnist ../shared/data/bloodmnist/bloodmnist.npz]

Writes one folder of images per set (PNG, lossless) plus ``in_distribution/``
(the unshifted PBC originals of the BloodMNIST test split, the images every
shifted set is made from) and ``sets.json`` describing each set. Every set is
deterministic: the same inputs give the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cellsdk.converters.shifts import DEV_SHIFTS, SHIFTS, apply_shift

# natural photographs and other (non-blood) microscopy shipped inside scikit-image (no download)
_NATURAL = ("astronaut", "camera", "coins", "chelsea", "coffee", "horse", "rocket", "moon", "page", "text",
            "clock", "grass", "gravel", "brick", "colorwheel", "logo", "cat", "shepp_logan_phantom")
_MICROSCOPY = ("immunohistochemistry", "retina", "cell", "hubble_deep_field")


def _pbc_test(pbc: Path) -> list[Path]:
    with open(pbc / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["bloodmnist_split"] == "test"]
    return [pbc / r["path"] for r in sorted(rows, key=lambda r: r["path"])]


def _save(image: Image.Image, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(folder / f"{name}.png")


def _crops(array: np.ndarray, count: int, rng: np.random.Generator, side: int = 200) -> list[Image.Image]:
    image = Image.fromarray(array).convert("RGB")
    if min(image.size) < side:
        image = image.resize((max(side, image.size[0]), max(side, image.size[1])), Image.Resampling.BICUBIC)
    width, height = image.size
    out = []
    for _ in range(count):
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        out.append(image.crop((left, top, left + side, top + side)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pbc", type=Path, default=Path("../shared/data/pbc_subset"))
    parser.add_argument("--bloodmnist", type=Path, default=Path("../shared/data/bloodmnist/bloodmnist.npz"))
    parser.add_argument("--bloodmnist-images", type=int, default=400)
    args = parser.parse_args(argv)
    if not (args.pbc / "labels.csv").is_file():
        print(f"error: {args.pbc}/labels.csv not found: pass --pbc PATH to the pbc_subset folder", file=sys.stderr)
        return 2
    sets: dict[str, dict[str, object]] = {}
    originals = _pbc_test(args.pbc)
    for path in originals:
        image = Image.open(path).convert("RGB")
        cls = path.parent.name
        _save(image, args.out / "in_distribution" / cls, path.stem)
        for name in DEV_SHIFTS:
            _save(apply_shift(name, image), args.out / name / cls, path.stem)
    sets["in_distribution"] = {"images": len(originals), "from": "PBC originals of the BloodMNIST test split, unshifted"}
    for name in DEV_SHIFTS:
        shift = SHIFTS[name]
        sets[name] = {"images": len(originals), "from": "the in_distribution images", "shift": (shift.__doc__ or "").strip()}
    if args.bloodmnist.is_file():
        data = np.load(args.bloodmnist)
        images, labels = data["test_images"], data["test_labels"].ravel()
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(len(images), size=min(args.bloodmnist_images, len(images)), replace=False))
        for i in chosen:
            small = Image.fromarray(images[i]).convert("RGB")
            _save(small.resize((200, 200), Image.Resampling.BICUBIC), args.out / "bloodmnist_28_upscaled" / str(labels[i]),
                  f"{i:05d}")
        sets["bloodmnist_28_upscaled"] = {"images": len(chosen), "from": f"{args.bloodmnist} test split",
                                          "shift": "28 px images upscaled to 200 px (bicubic): no fine detail"}
    else:
        print(f"note: {args.bloodmnist} not found, bloodmnist_28_upscaled skipped", file=sys.stderr)
    try:
        import skimage.data as skdata
    except ImportError:
        print("note: scikit-image is not installed (pip install scikit-image): natural_images and "
              "other_microscopy skipped", file=sys.stderr)
    else:
        rng = np.random.default_rng(0)
        for set_name, names, per_image in (("natural_images", _NATURAL, 12), ("other_microscopy", _MICROSCOPY, 50)):
            count = 0
            for name in names:
                for k, crop in enumerate(_crops(getattr(skdata, name)(), per_image, rng)):
                    _save(crop, args.out / set_name / name, f"{k:03d}")
                    count += 1
            sets[set_name] = {"images": count, "from": f"scikit-image data: {', '.join(names)}",
                              "shift": f"{per_image} random 200 px crops per image"}
    (args.out / "sets.json").write_text(json.dumps(sets, indent=2) + "\n")
    for name, info in sets.items():
        print(f"{name:<24}{info['images']:>6}  {info.get('shift', info['from'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

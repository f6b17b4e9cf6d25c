"""Where one image's preprocessing time goes, and what the faster ways to get the model's input would change.

    python -m cellsdk.benchmarks.studies.decode_path [FOLDER] [--limit N] [--model MODEL]

For each image (default: the shipped sample originals) it times, single-threaded, the steps cellsdk runs —
decode (``Image.open`` + ``load``), RGB / EXIF, the model's crop and resize (``prepare_image``), the float
input (``to_input_array``) and the guard's statistics (``measure``) — and three alternatives for the decode,
crop and resize, each compared pixel for pixel with cellsdk's own prepared image:

- ``resize_box``: one ``Image.resize(..., box=crop)`` instead of a crop then a resize (no intermediate copy);
- ``draft_half``: libjpeg's DCT-domain scaling (``Image.draft``, decode at half size) then the crop and resize
  scaled to match (the decoder does a quarter of the work);
- ``reduce_2``: full decode, then ``Image.reduce(2)`` (box filter) before the crop and resize.

It prints the median milliseconds of each, the largest pixel difference from cellsdk's input and, with the model,
the share of images whose top-1 label stays the same. Only an exact alternative (difference 0) can replace the
path without a new preprocessing recorded in the model and a re-verification.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _timed(function: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args)
    return value, (time.perf_counter() - start) * 1e3


def measure_paths(paths: list[Path], model: str | None = None) -> dict[str, Any]:
    """Per-step medians (ms) and, for each alternative, its median time, largest pixel difference and label agreement."""
    from cellsdk import Classifier
    from cellsdk.guard.input_checks import measure
    from cellsdk.preprocessing import crop_box, load_image, prepare_image, to_input_array

    classifier = Classifier.load(model, self_check=False)
    spec = classifier.metadata.preprocessing
    size = spec.input_size
    steps: dict[str, list[float]] = {k: [] for k in ("decode", "rgb", "crop_resize", "to_input", "measure")}
    alternatives: dict[str, dict[str, list[Any]]] = {k: {"ms": [], "diff": [], "same": []}
                                                    for k in ("resize_box", "draft_half", "reduce_2")}
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
               "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
    resample = filters[spec.resize_filter]
    for path in paths:
        def decode(p: Path = path) -> Image.Image:
            image = Image.open(p)
            image.load()
            return image

        raw, ms = _timed(decode)
        steps["decode"].append(ms)
        rgb, ms = _timed(load_image, raw)
        steps["rgb"].append(ms)
        prepared, ms = _timed(prepare_image, rgb, spec)
        steps["crop_resize"].append(ms)
        pixels = np.asarray(prepared)
        array, ms = _timed(to_input_array, pixels, spec)
        steps["to_input"].append(ms)
        _, ms = _timed(measure, pixels)
        steps["measure"].append(ms)
        reference = int(np.argmax(classifier.run_outputs(array[None])["logits"][0]))
        box = crop_box(rgb.size, spec)

        def scaled(box: tuple[int, int, int, int], factor: float) -> tuple[float, float, float, float]:
            return box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor

        def resize_box(p: Path = path, box: tuple[int, int, int, int] = box) -> Image.Image:
            return load_image(decode(p)).resize((size, size), resample, box=scaled(box, 1.0))

        def draft_half(p: Path = path, box: tuple[int, int, int, int] = box, width: int = rgb.width) -> Image.Image:
            opened = Image.open(p)
            opened.draft("RGB", (opened.width // 2, opened.height // 2))
            image = load_image(opened)
            return image.resize((size, size), resample, box=scaled(box, image.width / width))

        def reduce_2(p: Path = path, box: tuple[int, int, int, int] = box) -> Image.Image:
            image = load_image(decode(p)).reduce(2)
            return image.resize((size, size), resample, box=scaled(box, 0.5))

        for name, function in (("resize_box", resize_box), ("draft_half", draft_half), ("reduce_2", reduce_2)):
            other, ms = _timed(function)
            other_pixels = np.asarray(other)
            record = alternatives[name]
            record["ms"].append(ms + 0.0)
            record["diff"].append(int(np.abs(other_pixels.astype(int) - pixels.astype(int)).max()))
            label = int(np.argmax(classifier.run_outputs(to_input_array(other_pixels, spec)[None])["logits"][0]))
            record["same"].append(label == reference)
    cellsdk_path = sum(statistics.median(steps[k]) for k in ("decode", "rgb", "crop_resize"))
    return {"images": len(paths), "model": str(classifier.path),
            "steps_ms": {k: round(statistics.median(v), 4) for k, v in steps.items()},
            "decode_crop_resize_ms": round(cellsdk_path, 4),
            "alternatives": {name: {"ms": round(statistics.median(r["ms"]), 4),
                                    "max_pixel_difference": max(r["diff"]),
                                    "images_exact": sum(d == 0 for d in r["diff"]),
                                    "same_label": round(float(np.mean(r["same"])), 4)}
                             for name, r in alternatives.items()}}


def main() -> int:
    from cellsdk.platform.cpu import host_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="samples/pbc_raw")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    report = measure_paths(paths, args.model)
    cpu = host_cpu()
    print(f"{report['images']} images of {args.folder} on {cpu.model} ({cpu.cpu_class}), one thread, medians:")
    print("  " + ", ".join(f"{k} {v:.3f} ms" for k, v in report["steps_ms"].items()))
    print(f"  cellsdk's decode + crop + resize: {report['decode_crop_resize_ms']:.3f} ms")
    for name, r in report["alternatives"].items():
        print(f"  {name}: {r['ms']:.3f} ms, largest pixel difference {r['max_pixel_difference']}, "
              f"{r['images_exact']} of {report['images']} images exact, same top-1 label on {r['same_label'] * 100:.1f} %")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="decode_path")

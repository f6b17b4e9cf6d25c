"""The white-cell localiser on development fields: recall and precision at IoU >= 0.5, time per field.

    python -m cellsdk.benchmarks.studies.fields_localiser [--pbc ../shared/data/pbc_subset] [--fields 200]
        [--out benchmarks/results]

Development fields, built without any held-out data:

- **PBC originals** (360 x 363, one white cell near the centre, red cells and platelets around): each white
  cell's reference box comes from a stain segmentation made for this purpose (:func:`reference_box`: the
  non-background, violet-enough pixels joined to the centre, opened, holes filled; checked by eye on the 16
  sample originals), which the localiser does not use. The platelet originals are fields without a white cell.
- **Synthetic fields** (:func:`compose_field`): mosaics of PBC originals at 640 x 480 and 1920 x 1080, each tile
  at a random scale (0.6-1.2), stain (per-channel gain), focus (Gaussian blur) and JPEG quality; about a third
  of the tiles hold a white cell, the rest are platelet originals (red cells, platelets, no white cell).

Scores: a located box matches a reference box at IoU >= 0.5 (greedy, best IoU first); recall, precision, the
share of fields whose white-cell count is exact. Time: decode + locate + crop + classify (the shipped int8
model) per field, on this machine, with its CPU class. The ruler is the lab's (:class:`FieldScale` measured as
``cellsdk count`` does: the median over the first fields).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from cellsdk.fields.locate import FieldScale, LocaliserConfig, locate_cells, measure_scale
from cellsdk.fields.morphology import box_of, close, fill_holes, label, open_
from cellsdk.platform.cpu import host_cpu

__all__ = ["compose_field", "iou", "match", "reference_box"]

Box = tuple[int, int, int, int]


def reference_box(image: Image.Image) -> Box | None:
    """The development reference box of the white cell at the centre of a PBC original (None if none).

    Examples:
        >>> reference_box(Image.open("samples/pbc_raw/ig/MMY_163947.jpg").convert("RGB"))
        (110, 117, 264, 250)
    """
    rgb = np.asarray(image, np.float32)
    luminance = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    cell = (luminance < 0.92 * np.percentile(luminance, 95)) & (rgb[..., 2] - rgb[..., 1] > 18)
    cell = fill_holes(open_(close(cell, 4), 3))
    labels, _ = label(cell)
    height, width = cell.shape
    centre = labels[height // 2 - 15:height // 2 + 15, width // 2 - 15:width // 2 + 15]
    if not (centre > 0).any():
        return None
    chosen = int(np.argmax(np.bincount(centre[centre > 0].ravel())))
    top, left, bottom, right, _ = box_of((labels == chosen).astype(np.int32), 1)[0]
    if right - left > 0.8 * width or bottom - top > 0.8 * height:
        return None  # the segmentation ran into the background: no usable reference
    return int(left), int(top), int(right), int(bottom)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes.

    Examples:
        >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
        0.3333333333333333
    """
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def match(found: list[Box], truth: list[Box], threshold: float = 0.5) -> int:
    """How many located boxes match a reference box at IoU >= ``threshold`` (each used once, best first).

    Examples:
        >>> match([(0, 0, 10, 10), (50, 50, 60, 60)], [(1, 1, 10, 10)])
        1
    """
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f: set[int] = set()
    used_t: set[int] = set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_f)


def compose_field(tiles: list[tuple[Image.Image, Box | None]], size: tuple[int, int], rng: np.random.Generator,
                  scale: float | None = None) -> tuple[Image.Image, list[Box]]:
    """A synthetic field of ``size``: PBC originals side by side at one scale (random in 0.6-1.2 unless given: a
    lab's camera has one), stain, focus and JPEG quality; returns the field and its reference white-cell boxes
    (those at least half inside it).

    Examples:
        >>> import numpy as np
        >>> tile = Image.open("samples/pbc_raw/ig/MMY_163947.jpg").convert("RGB")
        >>> field, boxes = compose_field([(tile, (110, 117, 264, 250))], (640, 480), np.random.default_rng(0))
        >>> field.size, len(boxes) >= 1
        ((640, 480), True)
    """
    scale = float(rng.uniform(0.6, 1.2)) if scale is None else scale
    width, height = size
    field = Image.new("RGB", size)
    boxes: list[Box] = []
    tile_w, tile_h = round(360 * scale), round(363 * scale)
    for y in range(0, height, tile_h):
        for x in range(0, width, tile_w):
            image, box = tiles[int(rng.integers(len(tiles)))]
            field.paste(image.resize((tile_w, tile_h), Image.Resampling.BILINEAR), (x, y))
            if box is None:
                continue
            shifted = (x + box[0] * scale, y + box[1] * scale, x + box[2] * scale, y + box[3] * scale)
            clipped = (max(0, shifted[0]), max(0, shifted[1]), min(width, shifted[2]), min(height, shifted[3]))
            visible = max(0, clipped[2] - clipped[0]) * max(0, clipped[3] - clipped[1])
            if visible >= 0.5 * (shifted[2] - shifted[0]) * (shifted[3] - shifted[1]):
                boxes.append((round(clipped[0]), round(clipped[1]), round(clipped[2]), round(clipped[3])))
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    pixels = np.clip(np.asarray(field, np.float32) * gain, 0, 255).astype(np.uint8)
    field = Image.fromarray(pixels)
    blur = float(rng.uniform(0, 1.5))
    if blur > 0.3:
        field = field.filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    field.save(buffer, format="JPEG", quality=int(rng.integers(60, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), boxes


def _score(fields: list[tuple[Image.Image, list[Box]]], scale: FieldScale | None, config: LocaliserConfig
           ) -> dict[str, Any]:
    found_total = truth_total = matched = exact = 0
    times = []
    for image, truth in fields:
        started = time.perf_counter()
        boxes = [b.as_tuple() for b in locate_cells(image, config, scale=scale)]
        times.append(time.perf_counter() - started)
        hit = match(boxes, truth)
        found_total, truth_total, matched = found_total + len(boxes), truth_total + len(truth), matched + hit
        exact += len(boxes) == len(truth)
    return {"fields": len(fields), "cells": truth_total, "recall": matched / max(truth_total, 1),
            "precision": matched / max(found_total, 1), "count_exact": exact / max(len(fields), 1),
            "locate_ms_median": 1000 * statistics.median(times)}


def _lab_scale(images: list[Image.Image]) -> FieldScale:
    measured = [s.rbc_diameter for s in map(measure_scale, images[:10]) if s.measured]
    return FieldScale(float(statistics.median(measured)), True)


def _end_to_end(fields: list[tuple[Image.Image, list[Box]]], scale: FieldScale) -> dict[str, float]:
    """Median milliseconds per field: JPEG decode, locate, crop and classify (the shipped int8 model, 2 threads):
    the count's own path (:func:`cellsdk.fields.count.count_fields`) without its file writes."""
    from cellsdk import Classifier
    from cellsdk.fields.crops import crop_cell
    from cellsdk.preprocessing import load_image

    classifier = Classifier.load(threads=2)
    inference = classifier.inference
    totals, locating = [], []
    for image, _ in fields:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        started = time.perf_counter()
        field = load_image(data)
        boxes = locate_cells(field, scale=scale)
        located = time.perf_counter()
        if boxes:
            crops = [crop_cell(field, box, classifier.metadata.preprocessing, rbc_diameter=scale.rbc_diameter)
                     for box in boxes]
            inference.run([inference.prepare(crop) for crop in crops])
        totals.append(time.perf_counter() - started)
        locating.append(located - started)
    return {"ms_median": 1000 * statistics.median(totals), "ms_max": 1000 * max(totals),
            "decode_and_locate_ms_median": 1000 * statistics.median(locating)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbc", type=Path, default=Path("../shared/data/pbc_subset"))
    parser.add_argument("--fields", type=int, default=200, help="synthetic fields per size")
    parser.add_argument("--every", type=int, default=2, help="use every N-th PBC original")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    with open(args.pbc / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:: args.every]
    originals: list[tuple[Image.Image, Box | None, str]] = []
    for row in rows:
        image = Image.open(args.pbc / row["path"]).convert("RGB")
        box = None if row["class"] == "platelet" else reference_box(image)
        if row["class"] != "platelet" and box is None:
            continue  # no usable reference for this original
        originals.append((image, box, row["class"]))
    config = LocaliserConfig()
    scale = _lab_scale([image for image, _, _ in originals])
    results: dict[str, Any] = {"cpu": host_cpu().to_dict(),
                               "config": config.__dict__, "lab_rbc_diameter_px": scale.rbc_diameter}
    pbc = [(image, [box] if box else []) for image, box, _ in originals]
    results["pbc_originals"] = _score(pbc, scale, config)
    results["pbc_originals_per_field_ruler"] = _score(pbc, None, config)
    rng = np.random.default_rng(0)
    with_cell: list[tuple[Image.Image, Box | None]] = [(image, box) for image, box, _ in originals if box is not None]
    without: list[tuple[Image.Image, Box | None]] = [(image, None) for image, box, _ in originals if box is None]
    tiles = with_cell + without * 2  # about a third of the tiles hold a white cell
    for size in ((640, 480), (1920, 1080)):
        fields = [compose_field(tiles, size, rng) for _ in range(args.fields)]
        ruler = _lab_scale([image for image, _ in fields])  # varies with each field's scale: per-field rulers
        key = f"synthetic_{size[0]}x{size[1]}"
        results[key] = _score(fields, None, config)
        results[key]["lab_ruler_note"] = f"per-field rulers (each mosaic has its own scale); median {ruler.rbc_diameter:.1f}"
        results[key].update(_end_to_end(fields[:30], ruler))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fields_localiser.json").write_text(json.dumps(results, indent=1, default=str))
    cpu = host_cpu()
    lines = [f"`python -m cellsdk.benchmarks.studies.fields_localiser --fields {args.fields}` on {cpu.model} "
             f"(CPU class {cpu.cpu_class}); IoU >= 0.5; lab ruler {scale.rbc_diameter:.1f} px for the PBC "
             "originals, each synthetic field measured on its own (each mosaic has its own scale); end to end = "
             "JPEG decode + locate + crop + classify (shipped int8 model, 2 threads), median per field.", "",
             "| development fields | fields | white cells | recall | precision | count exact | locate ms | end to end ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, value in results.items():
        if isinstance(value, dict) and "recall" in value:
            lines.append(f"| {key} | {value['fields']} | {value['cells']} | {value['recall']:.3f} | "
                         f"{value['precision']:.3f} | {value['count_exact']:.3f} | {value['locate_ms_median']:.1f} | "
                         f"{value.get('ms_median', float('nan')):.1f} |")
    (args.out / "fields_localiser.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the napari widget does, without Qt: cut cells out of a field, classify and explain them, tabulate, count.

A cell is a box in the image's pixel coordinates: around each point of a points layer (a square of the model's
crop size, or a chosen size), each shape's bounding box, or the whole image for a single-cell image.

Examples:
    >>> boxes_from_points(np.array([[50.0, 60.0]]), (100, 100), 40)
    [(40, 30, 80, 70)]
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import atomic_path
from cellsdk.errors import ConfigError, InvalidImageError
from cellsdk.metadata import Preprocessing

__all__ = ["CSV_FIELDS", "CellResult", "boxes_from_points", "boxes_from_shapes", "classify_cells",
           "default_cell_size", "differential_count", "explanation_field", "field_rgb", "find_cells", "write_csv"]

#: the results table's columns, as the CSV writes them
CSV_FIELDS = ("cell", "x", "y", "left", "top", "right", "bottom", "label", "confidence", "status", "ood_score",
              "second", "second_probability", "milliseconds")

#: (left, top, right, bottom) in image pixels, right / bottom exclusive
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CellResult:
    """One classified cell.

    Attributes:
        cell: its number (1-based, in marker order).
        box: where it is in the image (left, top, right, bottom).
        prediction: the classifier's :class:`~cellsdk.prediction.Prediction` (guard verdict included).
        heatmap: the explanation over the box (``H x W`` in [0, 1]), or None where the model has none.
        seconds: how long classifying (and explaining) it took.
    """

    cell: int
    box: Box
    prediction: Any
    heatmap: np.ndarray | None
    seconds: float

    def row(self) -> dict[str, Any]:
        """The cell's row of the results table (:data:`CSV_FIELDS`).

        Examples:
            >>> from cellsdk.prediction import Prediction
            >>> p = Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75), ("a", 0.25)))
            >>> row = CellResult(1, (0, 0, 10, 20), p, None, 0.004).row()
            >>> row["label"], row["x"], row["y"], row["second"], row["milliseconds"]
            ('b', 5.0, 10.0, 'a', 4.0)
        """
        left, top, right, bottom = self.box
        prediction = self.prediction
        second = prediction.top_k[1] if len(prediction.top_k) > 1 else (None, None)
        return {"cell": self.cell, "x": (left + right) / 2, "y": (top + bottom) / 2, "left": left, "top": top,
                "right": right, "bottom": bottom, "label": prediction.label or "(rejected)",
                "confidence": round(float(prediction.confidence), 4), "status": prediction.status,
                "ood_score": None if prediction.ood_score is None else round(float(prediction.ood_score), 4),
                "second": second[0], "second_probability": None if second[1] is None else round(float(second[1]), 4),
                "milliseconds": round(self.seconds * 1000, 1)}


def default_cell_size(preprocessing: Preprocessing) -> int:
    """The box side around a marked cell: the model's own crop in pixels, else 2x its input size.

    Examples:
        >>> default_cell_size(Preprocessing(input_size=128, crop_mode="pixels", crop_value=200))
        200
    """
    if preprocessing.crop_mode == "pixels":
        return int(preprocessing.crop_value)
    return 2 * preprocessing.input_size


def field_rgb(data: Any, *, rgb: bool, leading: Sequence[int] = ()) -> np.ndarray:
    """The 2-D RGB uint8 picture of an image layer's data (grey is repeated; RGBA loses alpha; the leading axes of an
    n-D layer are indexed by ``leading``, napari's current step).

    Raises:
        InvalidImageError: data that is not a 2-D picture.

    Examples:
        >>> field_rgb(np.zeros((4, 5), np.uint16), rgb=False).shape
        (4, 5, 3)
    """
    array = np.asarray(data)
    spatial = 3 if rgb else 2
    while array.ndim > spatial:
        index = leading[array.ndim - spatial - 1] if len(leading) >= array.ndim - spatial else 0
        array = array[min(int(index), array.shape[0] - 1)]
    if array.ndim != spatial or (rgb and array.shape[-1] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise InvalidImageError(f"the image layer holds a {np.asarray(data).shape} array; choose a 2-D grey or RGB "
                                "image layer")
    if not rgb:
        array = np.repeat(array[..., None], 3, axis=2)
    array = array[..., :3]
    if array.dtype != np.uint8:
        values = array.astype(np.float64)
        low, high = np.nanmin(values), np.nanmax(values)
        scale = 255.0 / (high - low) if high > low else 0.0
        array = np.clip((values - low) * scale, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _clip(box: tuple[float, float, float, float], shape: tuple[int, int]) -> Box | None:
    height, width = shape
    left, top = max(0, round(box[0])), max(0, round(box[1]))
    right, bottom = min(width, round(box[2])), min(height, round(box[3]))
    return (left, top, right, bottom) if right - left >= 2 and bottom - top >= 2 else None


def boxes_from_points(points: np.ndarray, shape: tuple[int, int], size: int) -> list[Box]:
    """A ``size`` square centred on each ``(row, column)`` point, clipped to the image; points outside are dropped.

    Examples:
        >>> boxes_from_points(np.array([[5.0, 5.0], [500.0, 5.0]]), (100, 100), 20)
        [(0, 0, 15, 15)]
    """
    if size < 2:
        raise ConfigError(f"cell size {size}: use at least 2 pixels")
    half = size / 2
    boxes = [_clip((col - half, row - half, col + half, row + half), shape) for row, col in np.asarray(points)[:, -2:]]
    return [box for box in boxes if box is not None]


def boxes_from_shapes(shapes: Iterable[np.ndarray], shape: tuple[int, int]) -> list[Box]:
    """Each shape's bounding box (its vertices are ``(row, column)``), clipped to the image.

    Examples:
        >>> boxes_from_shapes([np.array([[10, 20], [30, 20], [30, 50], [10, 50]])], (100, 100))
        [(20, 10, 50, 30)]
    """
    boxes = []
    for vertices in shapes:
        vertices = np.asarray(vertices)[:, -2:]
        box = _clip((vertices[:, 1].min(), vertices[:, 0].min(), vertices[:, 1].max(), vertices[:, 0].max()), shape)
        if box is not None:
            boxes.append(box)
    return boxes


def find_cells(classifier: Any, picture: np.ndarray) -> tuple[list[Box], list[np.ndarray]]:
    """The white cells of a field found by :mod:`cellsdk.fields.locate`: their boxes, and each cell cut as the
    classifier's training crops were (:func:`cellsdk.fields.crops.crop_cell`), to classify instead of the box.

    Examples:
        >>> from cellsdk import Classifier
        >>> picture = np.asarray(__import__("PIL.Image").Image.open("samples/pbc_raw/ig/MMY_163947.jpg"))
        >>> boxes, crops = find_cells(Classifier.load(), picture)
        >>> len(boxes), crops[0].shape
        (1, (200, 200, 3))
    """
    from PIL import Image

    from cellsdk.fields.crops import background_colour, crop_cell
    from cellsdk.fields.locate import locate_cells, measure_scale

    field = Image.fromarray(picture)
    scale = measure_scale(field)
    found = locate_cells(field, scale=scale)
    fill = background_colour(field) if found else None
    crops = [np.asarray(crop_cell(field, box, classifier.metadata.preprocessing, rbc_diameter=scale.rbc_diameter,
                                  fill=fill)) for box in found]
    return [box.as_tuple() for box in found], crops


def classify_cells(classifier: Any, picture: np.ndarray, boxes: Sequence[Box], *, explain: bool = True,
                   crops: Sequence[np.ndarray] | None = None) -> list[CellResult]:
    """Classify (and, where the model has class activation maps, explain) each box of an RGB picture; with
    ``crops`` (from :func:`find_cells`) each box's crop is given instead of cut from the picture.

    Examples:
        >>> from cellsdk import Classifier
        >>> picture = np.asarray(__import__("PIL.Image").Image.open("samples/pbc_raw/ig/MMY_163947.jpg"))
        >>> classify_cells(Classifier.load(), picture, [(0, 0, 360, 363)])[0].prediction.label
        'ig'
    """
    explain = explain and "cams" in classifier.metadata.outputs
    results = []
    for number, box in enumerate(boxes, start=1):
        left, top, right, bottom = box
        crop = picture[top:bottom, left:right] if crops is None else crops[number - 1]
        started = time.perf_counter()
        if explain:
            explanation = classifier.explain(crop)
            prediction, heatmap = explanation.prediction, explanation.heatmap
        else:
            prediction, heatmap = classifier.predict(crop), None
        results.append(CellResult(number, box, prediction, heatmap, time.perf_counter() - started))
    return results


def explanation_field(results: Sequence[CellResult], shape: tuple[int, int]) -> np.ndarray:
    """One ``H x W`` float32 map over the whole picture: each cell's explanation in its box (the larger where
    boxes overlap), 0 elsewhere.

    Examples:
        >>> explanation_field([], (4, 4)).sum()
        np.float32(0.0)
    """
    field = np.zeros(shape, np.float32)
    for result in results:
        if result.heatmap is None:
            continue
        left, top, right, bottom = result.box
        region = field[top:bottom, left:right]
        np.maximum(region, result.heatmap[:region.shape[0], :region.shape[1]], out=region)
    return field


def differential_count(results: Sequence[CellResult], labels: Sequence[str]) -> dict[str, Any]:
    """The differential count a lab reports: cells per class (every label, in order) and percentages, of the
    cells the guard passed; the flagged ones are counted apart.

    Examples:
        >>> differential_count([], ["a", "b"])["counts"]
        {'a': 0, 'b': 0}
    """
    counted = Counter(r.prediction.label for r in results if r.prediction.status == "ok" and r.prediction.label)
    total = sum(counted.values())
    return {"counts": {label: counted.get(label, 0) for label in labels},
            "percent": {label: (100.0 * counted.get(label, 0) / total if total else 0.0) for label in labels},
            "counted": total, "flagged": sum(1 for r in results if r.prediction.status != "ok"),
            "cells": len(results)}


def write_csv(path: str | os.PathLike, results: Sequence[CellResult], labels: Sequence[str]) -> Path:
    """The results table, then the differential count, as one CSV file (written atomically).

    Examples:
        >>> import tempfile, os
        >>> write_csv(os.path.join(tempfile.mkdtemp(), "cells.csv"), [], ["a"]).read_text().splitlines()[0][:17]
        'cell,x,y,left,top'
    """
    count = differential_count(results, labels)
    with atomic_path(path) as target, open(target, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in results:
            writer.writerow(result.row())
        plain = csv.writer(stream)
        plain.writerow([])
        plain.writerow(["class", "count", "percent"])
        for label in labels:
            plain.writerow([label, count["counts"][label], f"{count['percent'][label]:.1f}"])
        plain.writerow(["flagged by the guard (not counted)", count["flagged"], ""])
    return Path(path)

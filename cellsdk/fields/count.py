"""A differential count from fields of view: every white cell located, classified with the guard on, counted.

:func:`count_fields` reads each field (every page of a multi-page TIFF), locates its white cells
(:mod:`cellsdk.fields.locate`), cuts each as the classifier's training crops were cut
(:mod:`cellsdk.fields.crops`), classifies them in one runtime call per field, and writes as it goes:

- ``OUT/cells.csv``: a row per cell: field, box, ``cut_by_edge``, label, confidence, status (``ok``, or the
  guard's ``out_of_distribution`` / ``uncertain``), OOD score; ``cells.parquet`` too with ``parquet=True``;
- ``OUT/fields.jsonl``: a line per field: its cells, its red-cell ruler, or the one-line error that kept it out;
- ``OUT/cells/`` the crops the classifier saw, ``OUT/fields/`` each field with its boxes (for the report);
- ``OUT/summary.json`` and ``OUT/report.html`` (:mod:`cellsdk.fields.report`) at the end.

**What counts.** Every located cell is in its field's white-cell count, including one cut by the field's edge
(marked ``cut_by_edge``; the localiser finds it by its nucleus, which lies inside the field). The differential
counts each cell under the classifier's label with a 95 % Wilson interval; cells the guard flags are counted
under their label too (a pre-classification, as an analyser's) and also reported apart, first in the report, for
the technician to confirm. With ``cells=N`` (100 or 200, like a manual differential) the count stops at the field
where the N-th cell is reached.

**The ruler.** One lab's camera has one magnification: the red-cell diameter is measured on the first
:attr:`CountConfig.ruler_fields` fields and their median used for every field (or given: ``rbc_diameter``).

**Resumable and safe.** The output folder is locked while a count runs (a second count on it is refused with
the first one's PID); run the same command again after an interruption and it continues after the last field
whose line reached ``fields.jsonl``, with the same ruler (kept in ``OUT/count.json``); a field's cell rows
written without its line are dropped first.

Examples:
    >>> from cellsdk import Classifier
    >>> result = count_fields(Classifier.load(), ["samples/pbc_raw"], "runs/count")  # doctest: +SKIP
    >>> result.summary["cells"]  # doctest: +SKIP
    14
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from cellsdk._io import parse_json, write_json, write_text
from cellsdk.errors import CellSDKError, ConfigError
from cellsdk.fields.crops import PBC_RBC_DIAMETER, background_colour, crop_cell
from cellsdk.fields.locate import CellBox, FieldScale, LocaliserConfig, locate_cells, measure_scale
from cellsdk.fields.read import FieldImage, read_fields
from cellsdk.fields.report import CELL_COLUMNS, CountResult, differential, write_report

__all__ = ["CELL_COLUMNS", "CountConfig", "CountResult", "classify_field", "count", "count_fields", "differential"]

COUNT_VERSION = 1


@dataclass(frozen=True)
class CountConfig:
    """How :func:`count_fields` works.

    Attributes:
        localiser: the stain-based localiser's settings.
        cells: stop once this many cells are counted (a 100- or 200-cell differential); None: every field.
        rbc_diameter: the fields' red-cell diameter in pixels, when known; None: measured.
        training_rbc: the red-cell diameter in the classifier's training images (the shipped model's: PBC).
        ruler_fields: how many fields measure the ruler (their median).
        parquet: also write ``cells.parquet`` (needs pyarrow).
    """

    localiser: LocaliserConfig = field(default_factory=LocaliserConfig)
    cells: int | None = None
    rbc_diameter: float | None = None
    training_rbc: float = PBC_RBC_DIAMETER
    ruler_fields: int = 10
    parquet: bool = False

    def __post_init__(self) -> None:
        if self.cells is not None and self.cells < 1:
            raise ConfigError(f"cells must be at least 1 (e.g. 100 or 200), got {self.cells}")
        if self.rbc_diameter is not None and not self.rbc_diameter > 0:
            raise ConfigError(f"rbc_diameter must be positive pixels, got {self.rbc_diameter}")
        if not self.training_rbc > 0 or self.ruler_fields < 1:
            raise ConfigError("training_rbc must be positive and ruler_fields at least 1")


def _iter_sources(inputs: Sequence[str | os.PathLike]) -> Iterator[Path]:
    from cellsdk.batch.jobs import iter_inputs

    yield from iter_inputs(inputs)


def _fields(inputs: Sequence[str | os.PathLike]) -> Iterator[FieldImage | tuple[str, str]]:
    """Every field in order, or ``(name, error)`` for a file that is not one."""
    for path in _iter_sources(inputs):
        try:
            yield from read_fields(path)
        except CellSDKError as err:
            yield str(path), str(err)


def _ruler(inputs: Sequence[str | os.PathLike], config: CountConfig) -> FieldScale:
    if config.rbc_diameter is not None:
        return FieldScale(config.rbc_diameter, True)
    measured = []
    for item in _fields(inputs):
        if isinstance(item, FieldImage):
            scale = measure_scale(item.image, config.localiser)
            if scale.measured:
                measured.append(scale.rbc_diameter)
            if len(measured) >= config.ruler_fields:
                break
    if not measured:
        return measure_scale(Image.new("RGB", (640, 480), "white"), config.localiser)  # the documented default
    return FieldScale(float(statistics.median(measured)), True)


def _state(out: Path, identity: dict[str, Any], config: CountConfig, inputs: Sequence[str | os.PathLike]
           ) -> tuple[FieldScale, set[str]]:
    """Start a count, or resume the one in ``out``: its ruler, and the fields it already finished."""
    job = out / "count.json"
    done: set[str] = set()
    if job.exists():
        state = parse_json(job.read_text())
        if state.get("model") != identity:
            raise ConfigError(f"{out} holds a count made with another model ({state.get('model', {}).get('arch')}); "
                              "give this count another --out, or delete that folder")
        fields_file = out / "fields.jsonl"
        if fields_file.exists():
            for line in fields_file.read_text().splitlines():
                try:
                    done.add(json.loads(line)["field"])
                except (ValueError, KeyError, TypeError):
                    break  # a torn last line: that field is counted again
        _keep_rows(out, done)
        return FieldScale(float(state["rbc_diameter"]), bool(state["measured"])), done
    ruler = _ruler(inputs, config)
    write_json(job, {"version": COUNT_VERSION, "model": identity, "rbc_diameter": ruler.rbc_diameter,
                     "measured": ruler.measured, "config": asdict(config)})
    return ruler, done


def _keep_rows(out: Path, done: set[str]) -> None:
    """Drop the cell rows (and the field lines) of fields that did not finish before an interruption."""
    cells = out / "cells.csv"
    if cells.exists():
        with open(cells, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("field") in done and None not in row]
        staged = cells.with_name(".cells.csv.resume")
        _write_rows(staged, rows, mode="w")
        os.replace(staged, cells)  # all the kept rows, or the file as it was
    fields_file = out / "fields.jsonl"
    if fields_file.exists():
        lines = []
        for line in fields_file.read_text().splitlines():
            try:
                if json.loads(line)["field"] in done:
                    lines.append(line)
            except (ValueError, KeyError, TypeError):
                break
        write_text(fields_file, "".join(f"{line}\n" for line in lines))


def _write_rows(path: Path, rows: Sequence[dict[str, Any]], mode: str = "a") -> None:
    new = mode == "w" or not path.exists()
    with open(path, mode, newline="") as handle:
        writer = csv.DictWriter(handle, CELL_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())


def _safe_name(name: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name.replace("#", "_p")).name)
    return stem[:80] or "field"


def _draw(field: FieldImage, boxes: Sequence[CellBox], labels: Sequence[str], path: Path) -> None:
    image = field.image.copy()
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for box, text in zip(boxes, labels, strict=False):
        draw.rectangle(box.as_tuple(), outline=(255, 140, 0) if box.cut_by_edge else (0, 160, 60), width=width)
        draw.text((box.left + width + 2, box.top + width + 2), text, fill=(0, 0, 0))
    image.thumbnail((1024, 1024))
    image.save(path, quality=85)


def classify_field(classifier: Any, image: Image.Image, ruler: FieldScale, config: CountConfig | None = None
                   ) -> list[tuple[CellBox, Image.Image, Any]]:
    """Locate, crop and classify (one runtime call) the white cells of one field: ``(box, crop, prediction)`` each.

    Examples:
        >>> from cellsdk import Classifier
        >>> from PIL import Image
        >>> field = Image.open("samples/pbc_raw/ig/MMY_163947.jpg")
        >>> [(p.label, box.cut_by_edge) for box, _, p in classify_field(Classifier.load(), field, FieldScale(74, True))]
        [('ig', False)]
    """
    config = config or CountConfig()
    image = image if image.mode == "RGB" else image.convert("RGB")
    boxes = locate_cells(image, config.localiser, scale=ruler)
    if not boxes:
        return []
    fill = background_colour(image)
    crops = [crop_cell(image, box, classifier.metadata.preprocessing, rbc_diameter=ruler.rbc_diameter,
                       training_rbc=config.training_rbc, fill=fill) for box in boxes]
    inference = classifier.inference
    predictions = inference.run([inference.prepare(crop) for crop in crops]).predictions
    return list(zip(boxes, crops, predictions, strict=True))


def _count_one(classifier: Any, field_image: FieldImage, ruler: FieldScale, config: CountConfig, out: Path,
               key: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    started = time.perf_counter()
    found = classify_field(classifier, field_image.image, ruler, config)
    seconds = time.perf_counter() - started
    rows = []
    for index, (box, crop, prediction) in enumerate(found):
        crop_name = f"cells/{key}_{index}.jpg"
        crop.resize((96, 96)).save(out / crop_name, quality=85)
        rows.append({"field": field_image.name, "cell": index, "left": box.left, "top": box.top, "right": box.right,
                     "bottom": box.bottom, "cut_by_edge": box.cut_by_edge, "label": prediction.label or "",
                     "confidence": round(float(prediction.confidence), 4), "status": prediction.status,
                     "ood_score": None if prediction.ood_score is None else round(float(prediction.ood_score), 4),
                     "crop": crop_name})
    _draw(field_image, [box for box, _, _ in found], [str(row["label"]) for row in rows], out / "fields" / f"{key}.jpg")
    line = {"field": field_image.name, "cells": len(rows), "image": f"fields/{key}.jpg",
            "size": list(field_image.image.size), "seconds": round(seconds, 4)}
    return rows, line


def count_fields(classifier: Any, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                 config: CountConfig | None = None, *, progress: Callable[[str], None] | None = None
                 ) -> CountResult:
    """Count the white cells in fields of view (files, folders, multi-page TIFFs): see the module.

    Args:
        classifier: a loaded :class:`~cellsdk.Classifier` (its guard flags the unsure cells).
        inputs: image files or folders of them.
        out: the output folder (created; resumed if it holds an unfinished count by the same model).
        config: the count's settings (:class:`CountConfig`).
        progress: called with each field's name as it is done.

    Returns:
        The summary (also in ``OUT/summary.json``), every cell's row and every field's line.

    Raises:
        ConfigError: no input, the folder is locked by another count, or it holds another model's count.

    Examples:
        >>> from cellsdk import Classifier
        >>> result = count_fields(Classifier.load(), ["samples/pbc_raw/ig"], "runs/count")  # doctest: +SKIP
        >>> result.summary["fields"]["read"]  # doctest: +SKIP
        2
    """
    from cellsdk.batch.jobs import output_lock

    config = config or CountConfig()
    if not inputs:
        raise ConfigError("no fields given: pass image files or folders of them")
    out = Path(out)
    metadata = classifier.metadata
    identity = {"arch": metadata.arch, "labels": list(metadata.labels), "precision": metadata.precision,
                "source": metadata.source_checkpoint_sha256}
    from cellsdk._io import make_writable_folder

    make_writable_folder(out)
    with output_lock(out / "cells.csv"):
        (out / "cells").mkdir(exist_ok=True)
        (out / "fields").mkdir(exist_ok=True)
        ruler, done = _state(out, identity, config, inputs)
        counted = 0
        if (out / "cells.csv").exists():
            with open(out / "cells.csv", newline="") as handle:
                counted = sum(1 for _ in csv.DictReader(handle))
        seen: set[str] = set()
        stopped = False
        for position, item in enumerate(_fields(inputs)):
            if config.cells is not None and counted >= config.cells:
                stopped = True
                break
            name = item.name if isinstance(item, FieldImage) else item[0]
            if name in seen or name in done:
                seen.add(name)
                continue
            seen.add(name)
            key = f"{position:05d}_{_safe_name(name)}"
            if isinstance(item, FieldImage):
                try:
                    rows, line = _count_one(classifier, item, ruler, config, out, key)
                except CellSDKError as err:
                    rows, line = [], {"field": name, "cells": 0, "error": str(err)}
            else:
                rows, line = [], {"field": name, "cells": 0, "error": item[1]}
            _write_rows(out / "cells.csv", rows)
            with open(out / "fields.jsonl", "a") as handle:
                handle.write(json.dumps(line) + "\n")
            counted += len(rows)
            if progress is not None:
                progress(name)
        return write_report(classifier, out, config, ruler, stopped=stopped)


def count(fields: Sequence[str | os.PathLike], out: str | os.PathLike, *, model: str | os.PathLike | None = None,
          cells: int | None = None, rbc_diameter: float | None = None, **load: Any) -> CountResult:
    """``cellsdk count FIELDS --out OUT`` in one call: load the model (the shipped one by default) and count.

    Args:
        fields: image files or folders of them.
        out: the output folder.
        model: a model file or conversion folder (:meth:`cellsdk.Classifier.load`).
        cells: stop at this many cells (a 100- or 200-cell differential).
        rbc_diameter: the fields' red-cell diameter in pixels, if known.
        **load: more :meth:`cellsdk.Classifier.load` options (``backend``, ``device``, ``threads`` ...).

    Examples:
        >>> import cellsdk
        >>> cellsdk.count(["samples/pbc_raw/ig"], "runs/count").summary["cells"]  # doctest: +SKIP
        2
    """
    from cellsdk.classifier import Classifier

    classifier = Classifier.load(model, ood="flag", **load)
    return count_fields(classifier, fields, out, CountConfig(cells=cells, rbc_diameter=rbc_diameter))

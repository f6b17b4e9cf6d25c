"""cellsdk count: fields of view in, a differential count out (cellsdk.fields.count, report, read, crops)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cellsdk
from cellsdk import Classifier
from cellsdk.batch.jobs import output_lock
from cellsdk.cli import cli
from cellsdk.errors import ConfigError, InvalidImageError
from cellsdk.fields import CellBox, read_fields
from cellsdk.fields.count import CountConfig, count_fields
from cellsdk.fields.crops import crop_cell, crop_side
from cellsdk.metadata import Preprocessing
from tests.conftest import REPO

PBC_RAW = REPO / "samples" / "pbc_raw"
WHITE = [p for p in sorted(PBC_RAW.glob("*/*.jpg")) if p.parent.name != "platelet"]


@pytest.fixture(scope="module")
def classifier():
    return Classifier.load(threads=1)


def _rows(out):
    with open(out / "cells.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_sample_originals_are_counted_each_under_its_own_class(tmp_path):
    result = CliRunner().invoke(cli, ["count", str(PBC_RAW), "--out", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "c"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fields"] == {"read": 16, "without_cells": 2, "failed": 0, "errors": []}
    assert summary["cells"] == 14 and summary["ruler"]["measured"]
    rows = _rows(out)
    assert sorted((r["field"].split("/")[-2], r["label"]) for r in rows) == sorted((p.parent.name,) * 2 for p in WHITE)
    table = {d["label"]: d for d in summary["differential"]}
    assert table["neutrophil"]["cells"] == 2 and table["platelet"]["cells"] == 0
    low, high = table["neutrophil"]["ci95"]
    assert low < 2 / 14 < high  # a 95 % Wilson interval around the share
    for row in rows:
        assert (out / row["crop"]).is_file()
    report = (out / "report.html").read_text()
    assert report.index("Flagged cells") < report.index("<h2>basophil") and "95 % interval" in report
    assert len(list((out / "fields").glob("*.jpg"))) == 16
    assert "14 white cells in 16 fields" in result.output


def test_a_file_that_is_not_an_image_is_one_line_and_the_others_are_counted(tmp_path):
    notes = tmp_path / "notes.tif"
    notes.write_text("not an image")
    folder = tmp_path / "fields"
    folder.mkdir()
    shutil.copy(WHITE[0], folder / "a.jpg")
    result = CliRunner().invoke(cli, ["count", str(folder), str(notes), "--out", str(tmp_path / "c"),
                                                  "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: {notes}: not a recognised image file" in result.output
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["cells"] == 1 and summary["fields"]["failed"] == 1


def test_an_empty_field_is_counted_as_a_field_without_cells(tmp_path, classifier):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (640, 480), (232, 222, 220)).save(blank)
    result = count_fields(classifier, [blank], tmp_path / "c")
    assert result.summary["cells"] == 0 and result.summary["fields"]["without_cells"] == 1
    assert all(d["share"] == 0.0 for d in result.summary["differential"])


def test_a_target_count_stops_at_the_field_that_reaches_it(tmp_path, classifier):
    result = count_fields(classifier, [PBC_RAW], tmp_path / "c", CountConfig(cells=3))
    assert result.summary["cells"] == 3 and result.summary["stopped_at_target"]
    assert result.summary["fields"]["read"] == 3


def test_an_interrupted_count_resumes_after_its_last_field_with_nothing_twice(tmp_path, classifier):
    out = tmp_path / "c"
    whole = count_fields(classifier, [PBC_RAW], tmp_path / "whole")
    count_fields(classifier, [PBC_RAW], out, CountConfig(cells=5))  # a count that stopped early ...
    lines = (out / "fields.jsonl").read_text().splitlines()
    (out / "fields.jsonl").write_text("\n".join(lines[:-1]) + '\n{"field": "torn')  # ... mid-way through a line
    resumed = count_fields(classifier, [PBC_RAW], out)
    assert resumed.summary["cells"] == whole.summary["cells"] == 14
    assert sorted(r["field"] for r in _rows(out)) == sorted(r["field"] for r in _rows(tmp_path / "whole"))
    assert resumed.summary["ruler"] == whole.summary["ruler"]


def test_a_count_folder_is_locked_and_keeps_to_its_model(tmp_path, classifier):
    out = tmp_path / "c"
    out.mkdir()
    with output_lock(out / "cells.csv"), pytest.raises(ConfigError, match="another cellsdk job"):
        count_fields(classifier, [WHITE[0]], out)
    count_fields(classifier, [WHITE[0]], out)
    state = json.loads((out / "count.json").read_text())
    state["model"]["labels"] = ["a", "b"]
    (out / "count.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="another model"):
        count_fields(classifier, [WHITE[0]], out)


def test_every_page_of_a_multipage_tiff_is_a_field(tmp_path, classifier):
    pages = [Image.open(p).convert("RGB") for p in WHITE[:3]]
    stack = tmp_path / "stack.tif"
    pages[0].save(stack, save_all=True, append_images=pages[1:])
    assert [f.name for f in read_fields(stack)] == [str(stack), f"{stack}#1", f"{stack}#2"]
    result = count_fields(classifier, [stack], tmp_path / "c")
    assert result.summary["fields"]["read"] == 3 and result.summary["cells"] == 3


@pytest.mark.parametrize("full", [255.0, 65535.0], ids=["0-255", "0-65535"])
def test_a_float_tiff_field_is_read_by_its_range(tmp_path, classifier, full):
    grey = np.asarray(Image.open(WHITE[0]).convert("L"), np.float32) * np.float32(full / 255)
    path = tmp_path / "field.tif"
    Image.fromarray(grey, mode="F").save(path)
    field = next(read_fields(path))
    assert abs(int(np.asarray(field.image)[..., 0].mean()) - int(np.asarray(Image.open(WHITE[0]).convert("L")).mean())) <= 1
    count_fields(classifier, [path], tmp_path / "c")  # grey: read and counted (or found empty), never refused


@pytest.mark.parametrize("mode", ["I;16", "RGB16"], ids=["16-bit grey", "16-bit RGB"])
def test_a_16_bit_field_is_read_by_its_full_range(tmp_path, classifier, mode):
    rgb = np.asarray(Image.open(WHITE[0]).convert("RGB")).astype(np.uint16) * 257
    path = tmp_path / "field16.png"
    if mode == "I;16":
        Image.fromarray(np.ascontiguousarray(rgb[..., 1])).save(path)  # a uint16 array: mode I;16
        assert next(read_fields(path)).image.getpixel((5, 5))[0] == rgb[5, 5, 1] // 257
    else:  # 16-bit RGB, as a camera SDK writes it (Pillow cannot write it: the PNG is assembled by hand)
        import zlib

        raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
        header = (rgb.shape[1]).to_bytes(4, "big") + (rgb.shape[0]).to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])

        def chunk(kind: bytes, data: bytes) -> bytes:
            return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                         + chunk(b"IEND", b""))
        result = count_fields(classifier, [path], tmp_path / "c")
        assert [row["label"] for row in result.rows] == [WHITE[0].parent.name]


def test_a_jpeg_turned_by_its_exif_orientation_is_read_upright(tmp_path):
    image = Image.open(WHITE[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "turned.jpg"
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    assert next(read_fields(path)).image.size == image.size


def test_a_corrupt_page_or_file_is_one_line(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(WHITE[0].read_bytes()[:200])
    with pytest.raises(InvalidImageError, match=r"broken\.jpg"):
        list(read_fields(broken))


def test_the_crop_is_the_training_crop_in_red_cell_diameters(tmp_path):
    spec = Preprocessing(input_size=128, crop_mode="pixels", crop_value=200)
    assert crop_side(spec, 74.0) == 200 and crop_side(spec, 37.0) == 100
    field = Image.new("RGB", (300, 200), (230, 220, 210))
    corner = crop_cell(field, CellBox(0, 0, 40, 40, 1.0), spec, rbc_diameter=37.0)
    assert corner.size == (200, 200) and corner.getpixel((5, 5)) == (230, 220, 210)  # filled past the edge
    with pytest.raises(ConfigError):
        crop_side(spec, 0.0)


def test_python_api_counts_like_the_command(tmp_path):
    result = cellsdk.count([PBC_RAW / "ig"], tmp_path / "c", threads=1)
    assert [row["label"] for row in result.rows] == ["ig", "ig"]


def test_bad_options_are_one_line(tmp_path):
    runner = CliRunner()
    for args, message in ((["--cells", "0"], "--cells"), (["--rbc-diameter", "-3"], "--rbc-diameter")):
        result = runner.invoke(cli, ["count", str(PBC_RAW), "--out", str(tmp_path), *args])
        assert result.exit_code == 2 and message in result.output
    with pytest.raises(ConfigError, match="cells must be at least 1"):
        CountConfig(cells=0)

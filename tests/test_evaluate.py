from __future__ import annotations

import csv
import json

import pytest

from cellsdk.errors import DatasetError
from cellsdk.training import evaluate

from .conftest import SAMPLES, make_folder


def test_report_files_agree(tiny_run, tmp_path):
    report = evaluate(tiny_run.best_checkpoint, SAMPLES, split="test", out_dir=tmp_path, data_cropped=True,
                      progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["n"] == 32 and on_disk["accuracy"] == report["accuracy"]
    with open(tmp_path / "confusion_matrix.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == on_disk["labels"]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == on_disk["confusion_matrix"]
    assert sum(map(sum, on_disk["confusion_matrix"])) == 32
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(on_disk["per_class"]) == set(on_disk["labels"])
    assert 0.0 <= on_disk["ece"] <= 1.0
    assert "crop" not in on_disk["preprocessing"]


def test_raw_images_use_the_crop(tiny_run, tmp_path):
    report = evaluate(tiny_run.best_checkpoint, SAMPLES.parent / "pbc_raw", split="all", progress=False)
    assert "centre crop 200 px" in report["preprocessing"] and report["n"] == 16


def test_classes_must_match_the_model(tiny_run, tmp_path):
    data = make_folder(tmp_path / "other", {"cat": 2, "dog": 2}, splits=("test",), size=8)
    with pytest.raises(DatasetError, match="not among the model's"):
        evaluate(tiny_run.best_checkpoint, data, split="test", progress=False)

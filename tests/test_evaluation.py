from __future__ import annotations

import csv
import json

import pytest

from cellsdk.errors import DatasetError
from cellsdk.training import evaluate
from tests.conftest import SAMPLES, make_folder


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


# ---------------------------------------------------------------- deployed models (torch-free path)


def test_deployed_model_report_matches_the_classifier(artefacts, tmp_path):
    from cellsdk import Classifier
    from cellsdk.datasets import load_dataset
    from cellsdk.evaluation import evaluate_model

    model = artefacts["onnxruntime"]
    report = evaluate_model(model, SAMPLES, split="test", out_dir=tmp_path, data_cropped=True, progress=False)
    clf = Classifier.load(model)
    clf = clf.with_preprocessing(clf.metadata.preprocessing.without_crop())
    split = load_dataset(SAMPLES).split("test")
    predicted = [clf.predict(p).index for p in split.paths]
    expected = sum(int(p == t) for p, t in zip(predicted, split.targets, strict=True)) / len(split)
    assert report["n"] == 32 and report["accuracy"] == pytest.approx(expected)
    assert report["backend"] == "onnxruntime" and report["model_sha256"] and report["model_size_mb"] > 0
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["confusion_matrix"] == report["confusion_matrix"]
    assert (tmp_path / "confusion_matrix.png").exists() and "crop" not in on_disk["preprocessing"]


def test_deployed_model_agrees_with_its_checkpoint(tiny_run, artefacts):
    from cellsdk.evaluation import evaluate_model

    fp32 = evaluate(tiny_run.best_checkpoint, SAMPLES, split="val", data_cropped=True, progress=False)
    onnx = evaluate_model(artefacts["onnxruntime"], SAMPLES, split="val", data_cropped=True, progress=False)
    assert onnx["confusion_matrix"] == fp32["confusion_matrix"]
    assert onnx["ece"] == pytest.approx(fp32["ece"], abs=1e-3)


def test_cli_eval_takes_deployed_models_and_refuses_runtime_options_for_checkpoints(tiny_run, artefacts, tmp_path):
    from click.testing import CliRunner

    from cellsdk.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["eval", str(artefacts["onnxruntime"]), "--data", str(SAMPLES.parent / "pbc_raw"),
                                 "--split", "all", "--quiet", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "16 images" in result.output and "onnxruntime" in result.output
    assert json.loads((tmp_path / "e" / "report.json").read_text())["n"] == 16
    result = runner.invoke(cli, ["eval", str(tiny_run.best_checkpoint), "--data", str(SAMPLES), "--option",
                                 "threads=1", "--quiet"])
    assert result.exit_code != 0 and "deployed models" in result.output
    result = runner.invoke(cli, ["eval", str(artefacts["onnxruntime"]), "--data", str(SAMPLES), "--option", "oops"])
    assert result.exit_code != 0 and "KEY=VALUE" in result.output

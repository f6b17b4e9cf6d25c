"""Combined training: one model from several labs, each source's loss over the classes it labels."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cellsdk.training import TrainConfig
from cellsdk.training.checkpoint import read_checkpoint_metadata
from cellsdk.training.combined import train_combined
from cellsdk.training.sources import Source
from tests.conftest import SAMPLES
from tests.training.test_adapt import make_other_lab

TINY = {"arch": "test_efficientnet", "pretrained": "none", "input_size": 32, "batch_size": 16, "crop_mode": "pixels",
        "crop_value": 200}


@pytest.mark.slow
def test_two_labs_with_different_classes_train_one_checkpoint_with_per_source_figures(tmp_path):
    lab = make_other_lab(tmp_path / "labB", classes=("lymphocyte", "neutrophil", "monocyte"), per_class=6)
    result = train_combined([Source.parse(SAMPLES, cropped=True), Source.parse(lab)], tmp_path / "run",
                            TrainConfig.quick(epochs=2, **TINY), progress=False)
    meta = read_checkpoint_metadata(result.best_checkpoint)
    assert len(meta.labels) == 8  # the union; labB's three are among them
    sources = meta.training["sources"]
    assert [s["name"] for s in sources] == ["bloodmnist_128", "labB"]
    assert sources[1]["classes"] == ["lymphocyte", "monocyte", "neutrophil"] and sources[0]["cropped"]
    assert all(len(s["sha256"]) == 64 for s in sources)
    assert set(result.per_source) == {"bloodmnist_128", "labB"}
    assert set(result.per_source["labB"]["recall"]) <= {"lymphocyte", "monocyte", "neutrophil"}
    assert json.loads((tmp_path / "run" / "sources.json").read_text())["best_epoch"] == result.best_epoch


@pytest.mark.slow
def test_cellsdk_train_takes_several_datasets_and_per_source_options(tmp_path):
    from cellsdk.cli import cli

    lab = make_other_lab(tmp_path / "labB", classes=("lymphocyte", "neutrophil"), per_class=5)
    args = ["train", str(SAMPLES), str(lab), "--out", str(tmp_path / "run"), "--cropped", str(SAMPLES),
            "--arch", "test_efficientnet", "--pretrained", "none", "--input-size", "32", "--crop", "200px",
            "--epochs", "1", "--batch-size", "16", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "bloodmnist_128:" in result.output and "labB:" in result.output
    wrong = CliRunner().invoke(cli, [*args[:6], "--cropped", "elsewhere", *args[7:]])
    assert wrong.exit_code == 2 and "not one of the DATA arguments" in wrong.output
    single = CliRunner().invoke(cli, ["train", str(SAMPLES), "--out", str(tmp_path / "x"), "--cropped", str(SAMPLES)])
    assert single.exit_code == 2 and "go with several DATA" in single.output

"""Adaptation from a lab's unlabelled cells: BatchNorm recalibration, the guard on pseudo-labels, FixMatch, and
``cellsdk adapt --unlabelled`` / ``--suggest``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cellsdk.errors import ConfigError, DatasetError
from cellsdk.training.adaptation import adapt
from cellsdk.training.checkpoint import read_checkpoint_metadata
from cellsdk.training.unlabelled import (
    UnlabelledConfig,
    UnlabelledPool,
    consistency_loss,
    recalibrate_batchnorm,
)
from tests.conftest import SAMPLES, TINY_CHECKPOINT
from tests.training.test_adapt import QUICK, make_other_lab

FEW = UnlabelledConfig(per_step=8, recalibration_cells=64, threshold=0.3)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> tuple[Path, Path]:
    """labB's labelled cells (3 per class) and a collect folder whose unlabelled/ pool holds them and 5 more each."""
    root = tmp_path_factory.mktemp("unlabelled")
    labelled = make_other_lab(root / "labB", per_class=3)
    collect = root / "collected"
    make_other_lab(collect / "unlabelled", per_class=8)
    for path in list((collect / "unlabelled").glob("*/*")):  # a pool is flat: no labels
        path.rename(collect / "unlabelled" / f"{path.parent.name}_{path.name}")
    for folder in [p for p in (collect / "unlabelled").iterdir() if p.is_dir()]:
        folder.rmdir()
    return labelled, collect


def test_recalibration_replaces_the_running_statistics_with_those_of_the_cells_given():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    model.eval()
    before = model[1].weight.detach().clone()
    batches = [np.full((4, 3, 2, 2), 2.0, np.float32), np.full((12, 3, 2, 2), 2.0, np.float32)]
    assert recalibrate_batchnorm(model, batches, torch.device("cpu")) == 16
    expected = model[0](torch.full((1, 3, 2, 2), 2.0)).mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected.detach(), atol=1e-5)
    assert torch.allclose(model[1].running_var, torch.zeros(4), atol=1e-5)
    assert torch.equal(model[1].weight, before) and not model.training and model[1].momentum == 0.1


def test_only_confident_trusted_answers_among_the_labs_classes_teach():
    weak = torch.tensor([[5.0, 0.0, 9.0], [5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [9.0, 0.0, 0.0]])
    allowed = torch.tensor([1.0, 1.0, 0.0])  # the lab labels classes 0 and 1 only
    trusted = torch.tensor([True, True, True, False])
    _, mask, labels = consistency_loss(weak, torch.zeros(4, 3), trusted, allowed, 0.9)
    assert mask.tolist() == [True, True, False, False]  # 3: not sure; 4: atypical, kept out by the guard
    assert labels[:2].tolist() == [0, 0]  # class 2 was the weak view's answer for cell 1 but the lab has none


def test_the_pool_leaves_out_labelled_cells_by_their_bytes_and_refuses_an_empty_folder(lab, tmp_path):
    labelled, collect = lab
    everything = UnlabelledPool(collect)
    assert everything.root == collect / "unlabelled" and len(everything) == 32
    apart = UnlabelledPool(collect, exclude=sorted(labelled.glob("*/*")))
    assert len(apart) == 20 and apart.duplicates == 12
    assert len(UnlabelledPool(collect, limit=5)) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no unlabelled cell images"):
        UnlabelledPool(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown unlabelled step"):
        UnlabelledConfig.ablation("everything")


@pytest.fixture(scope="module")
def adapted_with_pool(lab, tmp_path_factory):
    labelled, collect = lab
    return adapt(TINY_CHECKPOINT, labelled, tmp_path_factory.mktemp("run") / "run", unlabelled=collect,
                 replay=SAMPLES, replay_cropped=True, config=QUICK, unlabelled_config=FEW, convert=False,
                 progress=False)


@pytest.mark.slow
def test_adapt_with_a_pool_recalibrates_guards_self_trains_and_records_it(adapted_with_pool):
    record = adapted_with_pool.unlabelled
    assert record["pool"]["cells"] == 20 and record["pool"]["left_out_as_labelled"] == 12
    assert record["recalibration"]["cells"] > 0
    assert record["guard"]["trusted"] + record["guard"]["left_out"] == 20
    assert len(record["epochs"]) == QUICK.epochs and all(0 <= e["taught"] <= 1 for e in record["epochs"])
    taught = {label for e in record["epochs"] for label in e["pseudo_labels"]}
    assert taught <= {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}  # only the lab's own classes
    pseudo = Path(record["pseudo_labelled"]["folder"])
    assert sum(record["pseudo_labelled"]["cells"].values()) == len(list(pseudo.glob("*/*")))
    meta = read_checkpoint_metadata(adapted_with_pool.checkpoint)
    assert meta.training["adaptation"]["unlabelled"]["pool"]["cells"] == 20
    assert json.loads((adapted_with_pool.out_dir / "adapt.json").read_text())["unlabelled"]["guard"]


@pytest.mark.slow
def test_unlabelled_cells_alone_adapt_and_recalibration_alone_leaves_the_weights(lab, tmp_path):
    _, collect = lab
    alone = adapt(TINY_CHECKPOINT, None, tmp_path / "alone", unlabelled=collect, replay=SAMPLES, replay_cropped=True,
                  config=QUICK.replace(epochs=1), unlabelled_config=FEW, convert=False, progress=False)
    assert list(alone.after) == ["bloodmnist_128"] and len(alone.history) == 1
    recalibrated = adapt(TINY_CHECKPOINT, None, tmp_path / "recal", unlabelled=collect, replay=SAMPLES,
                         replay_cropped=True, config=QUICK, unlabelled_config=UnlabelledConfig.ablation("recalibrate"),
                         convert=False, progress=False)
    assert recalibrated.history == [] and any("weights are unchanged" in n for n in recalibrated.notes)
    from safetensors.torch import load_file

    original, changed = load_file(TINY_CHECKPOINT), load_file(recalibrated.checkpoint)
    weights = [k for k in original if k.endswith("weight") and "bn" not in k and k in changed]
    assert weights and all(torch.equal(original[k], changed[k]) for k in weights)
    assert any(not torch.equal(original[k], changed[k]) for k in original if k.endswith("running_mean"))
    with pytest.raises(ConfigError, match="nothing to adapt on"):
        adapt(TINY_CHECKPOINT, None, tmp_path / "x", replay=SAMPLES, convert=False)
    with pytest.raises(ConfigError, match="--replay"):
        adapt(TINY_CHECKPOINT, None, tmp_path / "x", unlabelled=collect, convert=False)


def test_cellsdk_adapt_suggests_cells_to_label_and_adapts_from_a_pool(lab, tmp_path):
    from cellsdk.cli import cli

    _, collect = lab
    runner = CliRunner()
    suggested = runner.invoke(cli, ["adapt", str(TINY_CHECKPOINT), "--suggest", "6", str(collect), "--replay",
                                    str(SAMPLES), "--replay-cropped", "--out", str(tmp_path / "pick")])
    assert suggested.exit_code == 0, suggested.output
    copies = sorted((tmp_path / "pick" / "to_label").iterdir())
    assert len(copies) == 6 and copies[0].name.startswith("1_")
    rows = (tmp_path / "pick" / "suggested.csv").read_text().splitlines()
    assert rows[0] == "rank,path,predicted,uncertainty" and len(rows) == 7
    assert "picked 6 of 32 cells" in suggested.output
    missing = runner.invoke(cli, ["adapt", str(TINY_CHECKPOINT), "--suggest", "6", "--out", str(tmp_path / "p")])
    assert missing.exit_code == 2 and "needs the folder of unlabelled cells" in missing.output
    run = runner.invoke(cli, ["adapt", str(TINY_CHECKPOINT), "--unlabelled", str(collect), "--replay", str(SAMPLES),
                              "--replay-cropped", "--no-convert", "--epochs", "1", "--steps", "1",
                              "--unlabelled-steps", "recalibrate", "--out", str(tmp_path / "run"), "--quiet"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "run" / "best.safetensors").is_file() and "Traceback" not in run.output
    shutil.rmtree(tmp_path / "run")

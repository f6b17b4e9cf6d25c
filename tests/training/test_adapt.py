"""`cellsdk adapt`: fine-tune on another lab's few cells, record every source, convert with per-lab checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cellsdk.errors import ConfigError
from cellsdk.training.adaptation import AdaptConfig, adapt
from cellsdk.training.checkpoint import read_checkpoint_metadata
from cellsdk.training.mixing import partial_label_loss
from cellsdk.training.sources import Source, SourceSet, balanced_draw
from tests.conftest import SAMPLES, TINY_CHECKPOINT, TINY_GATE

LABELS = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
QUICK = AdaptConfig(epochs=2, steps_per_epoch=3, batch_size=8, val_limit=16, augment=AdaptConfig().augment)


def make_other_lab(root: Path, classes=("eosinophil", "lymphocyte", "monocyte", "neutrophil"), per_class=6) -> Path:
    """Another 'lab': the sample crops at 1.6x the magnification, with a yellow cast, as raw class folders."""
    for name in classes:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        files = sorted((SAMPLES / "train" / name).glob("*"))[:per_class] + sorted((SAMPLES / "val" / name).glob("*"))
        for i, path in enumerate(files[:per_class]):
            image = Image.open(path).convert("RGB").resize((205, 205), Image.Resampling.BICUBIC)
            pixels = np.clip(np.asarray(image).astype(int) + np.array([12, 8, -35]), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(target / f"cell_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def other_lab(tmp_path_factory) -> Path:
    return make_other_lab(tmp_path_factory.mktemp("labB") / "labB")


def test_the_loss_counts_only_the_classes_a_source_can_label():
    logits = torch.tensor([[0.0, 0.0, 9.0], [0.0, 0.0, 9.0]])
    targets = torch.tensor([0, 0])
    everything = partial_label_loss(logits, targets, torch.ones(2, 3))
    two_classes = partial_label_loss(logits, targets, torch.tensor([[1.0, 1.0, 0.0]] * 2))
    assert float(two_classes) == pytest.approx(np.log(2), abs=1e-4)  # class 2 neither helps nor hurts
    assert float(everything) > 8
    smoothed = partial_label_loss(logits, targets, torch.tensor([[1.0, 1.0, 0.0]] * 2), smoothing=0.1)
    assert np.isfinite(float(smoothed)) and float(smoothed) < 1  # smoothing spreads over the allowed classes only


def test_sources_map_their_classes_onto_the_models_labels(other_lab):
    sources = SourceSet([Source.parse(other_lab), Source.parse(SAMPLES, cropped=True)], LABELS, val_fraction=0.3)
    assert sources.classes_of(0) == [1, 4, 5, 6] and sources.classes_of(1) == list(range(8))
    assert any("held out for validation" in note for note in sources.notes)
    record = sources.record(0, read_checkpoint_metadata(TINY_CHECKPOINT).preprocessing)
    assert record["name"] == "labB" and record["images"] == {"train": 16, "val": 8} and len(record["sha256"]) == 64
    with pytest.raises(ConfigError, match="--add-labels"):
        SourceSet([Source.parse(other_lab)], ("lymphocyte", "monocyte"))
    grown = SourceSet([Source.parse(other_lab)], ("lymphocyte", "monocyte"), grow=True)
    assert grown.added == ["eosinophil", "neutrophil"]


def test_a_class_with_one_cell_is_trained_on_and_said_so(tmp_path, other_lab):
    lonely = make_other_lab(tmp_path / "labC", classes=("eosinophil", "basophil"), per_class=1)
    make_other_lab(lonely, classes=("eosinophil",), per_class=5)
    notes = SourceSet([Source.parse(lonely)], LABELS).notes
    assert any("basophil has a single image" in n for n in notes)


def test_balanced_draws_give_every_class_its_share():
    targets = np.array([0] * 200 + [1] * 5 + [2] * 5)
    drawn = targets[balanced_draw(targets, 3000, np.random.default_rng(0))]
    assert np.allclose(np.bincount(drawn) / 3000, 1 / 3, atol=0.04)


def test_presets_scale_with_the_cells_per_class():
    few, some, many = AdaptConfig.for_cells(5), AdaptConfig.for_cells(20), AdaptConfig.for_cells(200)
    assert few.epochs * few.steps_per_epoch < some.epochs * some.steps_per_epoch < many.epochs * many.steps_per_epoch
    with pytest.raises(ConfigError, match="layers"):
        AdaptConfig(layers="middle")


@pytest.fixture(scope="module")
def adapted(other_lab, tmp_path_factory):
    """The committed tiny checkpoint adapted to labB with replay, converted to ONNX (fp32 + int8)."""
    from cellsdk.converters.targets import CpuTargets

    out = tmp_path_factory.mktemp("adapted") / "run"
    return adapt(TINY_CHECKPOINT, other_lab, out, replay=SAMPLES, replay_cropped=True, config=QUICK,
                 convert_options={"formats": ("onnx",), "verify": TINY_GATE, "calib_samples": 64,
                                  "cpu_targets": CpuTargets.parse("native")}, progress=False)


@pytest.mark.slow
def test_adapt_records_every_source_and_the_scale_in_the_checkpoint(adapted):
    meta = read_checkpoint_metadata(adapted.checkpoint)
    record = meta.training["adaptation"]
    names = [s["name"] for s in record["sources"]]
    assert names == ["labB", "bloodmnist_128"]
    for source in record["sources"]:
        assert len(source["sha256"]) == 64 and source["images"]["train"] > 0 and source["preprocessing"]
        assert source["after"]["images"] > 0
    assert meta.preprocessing.scale_range is not None and meta.labels == LABELS
    assert set(adapted.after) == {"labB", "bloodmnist_128"} and set(adapted.before) == set(adapted.after)
    assert len(adapted.history) == QUICK.epochs
    assert json.loads((adapted.out_dir / "adapt.json").read_text())["sources"][0]["name"] == "labB"


@pytest.mark.slow
def test_adapt_converts_with_the_guard_fitted_over_both_labs_and_each_artefact_checked_on_each(adapted):
    manifest = adapted.conversion
    assert manifest is not None
    assert [lab["name"] for lab in manifest["labs"]] == ["bloodmnist_128", "labB"]
    assert manifest["calibration"]["source"].endswith(" + labB")  # the new lab's cells set the int8 ranges too
    assert manifest["calibration"]["images"] == 64 + 16  # the replay's sample and labB's 16 training cells
    assert manifest["labs"][1]["images"] == 8 and "fp32" in manifest["labs"][1]
    guard = manifest["metadata"]["guard"]["fitted_on"]
    assert [lab["name"] for lab in guard["labs"]] == ["labB"] and set(guard["threshold_per_lab"]) >= {"labB"}
    files = {a["file"]: a for a in manifest["artefacts"]}
    assert set(files) == {"model.fp32.onnx", "model.int8.onnx"}
    for entry in files.values():
        if entry["status"] == "passed":
            assert set(entry["labs"]) == {"bloodmnist_128", "labB"}
            assert 0 <= entry["labs"]["labB"]["flagged"] <= 1
    from cellsdk import Classifier

    classifier = Classifier.load(adapted.out_dir / "converted" / "model.fp32.onnx", self_check=False)
    if files["model.fp32.onnx"]["status"] == "passed":  # the per-lab record travels in the artefact too
        assert set(classifier.metadata.training["labs_checked"]) == {"bloodmnist_128", "labB"}
    assert classifier.metadata.preprocessing.scale_range == read_checkpoint_metadata(adapted.checkpoint).preprocessing.scale_range


@pytest.mark.slow
def test_cellsdk_adapt_prints_the_tables_and_needs_replay_to_convert(other_lab, tmp_path):
    from cellsdk.cli import cli

    runner = CliRunner()
    refused = runner.invoke(cli, ["adapt", str(TINY_CHECKPOINT), str(other_lab), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "--replay" in refused.output and "Traceback" not in refused.output
    result = runner.invoke(cli, ["adapt", str(TINY_CHECKPOINT), str(other_lab), "--out", str(tmp_path / "run"),
                                 "--replay", str(SAMPLES), "--replay-cropped", "--no-convert", "--epochs", "1",
                                 "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "before -> after" in result.output and "labB" in result.output
    assert (tmp_path / "run" / "best.safetensors").is_file() and not (tmp_path / "run" / "converted").exists()


@pytest.mark.slow
def test_add_labels_grows_the_head_and_keeps_the_old_answers(tmp_path, other_lab):
    import shutil

    lab = tmp_path / "labD"
    shutil.copytree(other_lab, lab)
    (lab / "monocyte").rename(lab / "smudge")  # a class the model does not know
    with pytest.raises(ConfigError, match="--add-labels"):
        adapt(TINY_CHECKPOINT, lab, tmp_path / "refused", config=QUICK, convert=False, progress=False)
    result = adapt(TINY_CHECKPOINT, lab, tmp_path / "run", replay=SAMPLES, replay_cropped=True, add_labels=True,
                   config=QUICK.replace(epochs=1, steps_per_epoch=1), convert=False, progress=False)
    meta = read_checkpoint_metadata(result.checkpoint)
    assert meta.labels == (*LABELS, "smudge")
    assert any("added 1 class" in note for note in result.notes)
    from cellsdk.training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(result.checkpoint)
    assert model.get_classifier().out_features == 9

"""Lighter and better models: structured pruning to a MAC target (and the pruned checkpoint through load and
conversion unchanged), distillation from teachers at their own input size, and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("torch_pruning", reason="structured pruning needs torch-pruning (pip install 'cellsdk[prune]')")

from cellsdk.errors import ConfigError
from cellsdk.training import TrainConfig, load_checkpoint, train
from cellsdk.training.checkpoint import save_checkpoint
from cellsdk.training.models import create_model
from cellsdk.training.pruning import count_macs, prune_checkpoint, prune_to_macs
from tests.conftest import SAMPLES, TINY_CHECKPOINT


@pytest.mark.slow  # prunes a model three times (the fast lane loads a pruned checkpoint below)
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_pruning_reaches_the_mac_target_with_whole_channels_and_leaves_the_model_alone(target):
    model, _ = create_model("efficientnet_lite0", 8, "none", 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, record = prune_to_macs(model, 64, target)
    assert 0.85 * target <= record["macs_after"] / record["macs_before"] <= target  # close to the target, not over
    assert record["macs_after"] == count_macs(pruned, 64)[0] and record["params_after"] < record["params_before"]
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert all(m.out_channels % 8 == 0 for m in convs[1:-1])  # rounded for SIMD int8 kernels
    assert pruned.get_classifier().out_features == 8  # the classes stay
    assert pruned(torch.zeros(2, 3, 64, 64)).shape == (2, 8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_pruned_checkpoint_loads_with_its_own_shapes_and_the_same_answers(tmp_path):
    source = TINY_CHECKPOINT
    model, metadata = load_checkpoint(source)
    path, record = prune_checkpoint(source, tmp_path / "pruned.safetensors", 0.5)
    loaded, meta = load_checkpoint(path)
    assert meta.training["pruning"]["macs_after"] == record["macs_after"] and record["fine_tuned_epochs"] == 0
    pruned, _ = prune_to_macs(model, metadata.preprocessing.input_size, 0.5)
    x = torch.randn(3, 3, metadata.preprocessing.input_size, metadata.preprocessing.input_size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-5)
    with pytest.raises(ConfigError, match="pruned already"):
        prune_checkpoint(path, tmp_path / "again.safetensors", 0.5)


def test_an_architecture_the_pruner_cannot_follow_is_refused_in_one_line():
    import timm

    with pytest.raises(ConfigError) as caught:
        prune_to_macs(timm.create_model("test_vit", num_classes=3, img_size=64), 64, 0.5, arch="test_vit")
    assert "cannot prune this architecture" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        prune_to_macs(create_model("test_efficientnet", 3, "none")[0], 64, 1.5)


@pytest.mark.slow  # trains, prunes and fine-tunes, then converts
def test_cellsdk_prune_fine_tunes_and_the_converter_takes_the_result(tmp_path):
    from cellsdk.cli import prune_command
    from cellsdk.converters import ConvertConfig, convert
    from cellsdk.converters.targets import CpuTargets
    from tests.conftest import TINY_GATE

    dense = train(SAMPLES, tmp_path / "dense", TrainConfig.quick(
        arch="efficientnet_lite0", pretrained="none", input_size=32, epochs=1, batch_size=16, max_steps_per_epoch=2,
        crop_mode="pixels", crop_value=200, data_cropped=True, check_duplicates=False), progress=False)
    result = CliRunner().invoke(prune_command, [str(dense.best_checkpoint), "--target-macs", "0.5", "--data",
                                                str(SAMPLES), "--out", str(tmp_path / "p50"), "--epochs", "1",
                                                "--max-steps", "2", "--teacher", str(dense.best_checkpoint),
                                                "--quiet"])
    assert result.exit_code == 0, result.output
    assert "pruned: " in result.output and "GMAC" in result.output
    best = tmp_path / "p50" / "best.safetensors"
    model, meta = load_checkpoint(best)
    assert meta.training["pruning"]["fine_tuned_epochs"] == 1 and meta.arch == "efficientnet_lite0"
    assert meta.training["distillation"]["teachers"][0]["path"] == str(dense.best_checkpoint)  # recovered from it
    assert count_macs(model, 32)[0] == meta.training["pruning"]["macs_after"]
    from cellsdk.artefacts.info import describe

    assert "pruned: " in describe(best) and "fine-tuned 1 epochs" in describe(best)
    converted = convert(best, tmp_path / "converted", ConvertConfig(
        formats=("onnx",), precisions=("int8",), calib=str(SAMPLES), data_cropped=True, calib_samples=32,
        verify=TINY_GATE, cpu_targets=CpuTargets.parse("native")), progress=False)
    manifest = json.loads((tmp_path / "converted" / "manifest.json").read_text())
    assert converted is not None and {a["status"] for a in manifest["artefacts"]} <= {"passed", "failed"}
    assert any(a["file"].endswith(".onnx") and "verification" in a for a in manifest["artefacts"])


def test_distillation_uses_each_teachers_own_input_size_and_is_recorded(tmp_path):
    teacher = train(SAMPLES, tmp_path / "teacher", TrainConfig.quick(
        arch="test_efficientnet", pretrained="none", input_size=48, epochs=1, batch_size=16, max_steps_per_epoch=1,
        check_duplicates=False), progress=False)
    student = train(SAMPLES, tmp_path / "student", TrainConfig.quick(
        arch="test_efficientnet", pretrained="none", input_size=32, epochs=1, batch_size=16, max_steps_per_epoch=1,
        check_duplicates=False, teachers=(str(teacher.best_checkpoint),) * 2, distill_weight=0.7), progress=False)
    _, meta = load_checkpoint(student.best_checkpoint)
    record = meta.training["distillation"]
    assert [t["input_size"] for t in record["teachers"]] == [48, 48] and record["weight"] == 0.7
    assert meta.preprocessing.input_size == 32
    from cellsdk.artefacts.info import describe

    assert "distilled from 2 teacher(s): test_efficientnet at 48 px" in describe(student.best_checkpoint)


def test_a_teacher_with_other_classes_is_refused_in_one_line(tmp_path):
    from cellsdk.metadata import ModelMetadata, Preprocessing

    model, _ = create_model("test_efficientnet", 3, "none")
    other = ModelMetadata(labels=("x", "y", "z"), arch="test_efficientnet", preprocessing=Preprocessing(input_size=32))
    path = save_checkpoint(tmp_path / "other.safetensors", model, other)
    with pytest.raises(ConfigError, match="a teacher must be trained on the same classes"):
        train(SAMPLES, tmp_path / "student", TrainConfig.quick(
            arch="test_efficientnet", pretrained="none", input_size=32, epochs=1, max_steps_per_epoch=1,
            check_duplicates=False, teachers=(str(path),)), progress=False)


def test_a_teachers_soft_targets_are_cached_for_the_next_student_and_recomputed_when_anything_changes(
        tmp_path, monkeypatch):
    import cellsdk.training.torchdata as torchdata
    from cellsdk.datasets import load_dataset
    from cellsdk.training.distill import teacher_targets

    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset(SAMPLES)
    split, labels = dataset.split("train"), dataset.labels
    first, record = teacher_targets([TINY_CHECKPOINT], split, labels, data_cropped=True, temperature=2.0)
    assert first.shape == (len(split), len(labels)) and len(list((tmp_path / "cache" / "soft_targets").iterdir())) == 1

    def no_teacher_run(*args, **kwargs):
        raise AssertionError("the teacher ran again although its soft targets are cached")

    with monkeypatch.context() as patched:
        patched.setattr(torchdata, "SplitDataset", no_teacher_run)
        again, again_record = teacher_targets([TINY_CHECKPOINT], split, labels, data_cropped=True, temperature=2.0)
    assert torch.equal(first, again) and again_record == record
    hotter, _ = teacher_targets([TINY_CHECKPOINT], split, labels, data_cropped=True, temperature=4.0)  # a new key
    assert not torch.allclose(hotter, first) and len(list((tmp_path / "cache" / "soft_targets").iterdir())) == 2
    for entry in (tmp_path / "cache" / "soft_targets").iterdir():
        entry.write_bytes(b"damaged")  # a damaged entry is recomputed, never trusted
    recomputed, _ = teacher_targets([TINY_CHECKPOINT], split, labels, data_cropped=True, temperature=2.0)
    assert torch.allclose(recomputed, first)

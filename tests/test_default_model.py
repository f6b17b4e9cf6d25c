"""The reference blood-cell model shipped as package data (MODEL_CARD.md)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest

import cellsdk
from cellsdk import Classifier
from cellsdk.classifier import DEFAULT_MODEL, default_model_path
from cellsdk.datasets import load_dataset
from cellsdk.errors import ModelNotFoundError
from cellsdk.labelmaps import BLOODMNIST
from tests.conftest import RAW_SAMPLES, REPO, SAMPLES

CHECKPOINT = REPO / "models" / DEFAULT_MODEL.replace(".int8.onnx", ".safetensors")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    return Classifier.load()


def test_loads_with_no_argument(shipped):
    assert shipped.path == default_model_path() and shipped.path.name == DEFAULT_MODEL
    assert shipped.backend_name == "onnxruntime" and shipped.labels == BLOODMNIST
    assert default_model_path().parent == (REPO / "cellsdk" / "data").resolve() or "site-packages" in str(
        default_model_path())


def test_metadata_is_complete(shipped):
    meta = shipped.metadata
    assert meta.arch == "tf_efficientnet_lite0" and meta.output == "logits"
    assert meta.precision == "int8" and meta.quantization and meta.calibration_sha256
    pre = meta.preprocessing
    assert (pre.input_size, pre.crop_mode, pre.crop_value, pre.mean, pre.std) == (128, "pixels", 200, (0.5,) * 3,
                                                                                  (0.5,) * 3)
    assert meta.source_checkpoint_sha256 == sha256(CHECKPOINT)
    assert "bloodmnist_128" in meta.dataset
    assert meta.training["temperature_scaling"]["split"] == "val"
    assert 0 < meta.training["temperature_scaling"]["temperature"] < 5
    assert meta.reference_metrics["accuracy"] > 0.98 and meta.reference_metrics["ece"] < 0.02
    assert meta.created and meta.cellsdk_version


def test_portable_and_verified_on_cpu_classes(shipped):
    """The shipped int8 model uses the portable recipe and records passed checks on AVX2 and SSE4 classes."""
    meta = shipped.metadata
    assert meta.schema_version >= 2
    assert meta.quantization["recipe"] == "portable" and meta.quantization["reduce_range"] is True
    assert meta.quantization["saturation_safe"] is True
    by_target = {r["target"]: r for r in meta.cpu_verification}
    assert {"native", "haswell", "nehalem"} <= set(by_target)
    assert by_target["haswell"]["cpu_class"] == "x86-64-avx2" and by_target["nehalem"]["cpu_class"] == "x86-64-sse4"
    for record in meta.cpu_verification:
        assert record["status"] == "passed", record
        assert record["images"] >= 400 and record["accuracy_change"] > -0.005
        assert record["worst_recall_change"] >= -0.02 - 1e-9  # one image of 50 is exactly the 2-point limit


@pytest.mark.parametrize("cpu_class", ["x86-64-avx2", "x86-64-sse4"])
def test_loads_without_warning_on_verified_classes(monkeypatch, cpu_class):
    import warnings

    import cellsdk.platform.cpu
    from cellsdk.platform.cpu import HostCpu

    fake = HostCpu("test CPU", (), cpu_class, "test")
    monkeypatch.setattr(cellsdk.platform.cpu, "host_cpu", lambda: fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Classifier.load(strict=True).cpu_check.status == "verified"


def test_the_fp32_checkpoint_is_its_source():
    from cellsdk.artefacts.checkpoints import read_checkpoint_metadata

    meta = read_checkpoint_metadata(CHECKPOINT)
    assert meta.precision == "fp32" and meta.labels == BLOODMNIST
    assert meta.preprocessing == Classifier.load().metadata.preprocessing
    assert CHECKPOINT.stat().st_size < 20e6  # small enough for git


def test_classifies_the_sample_crops(shipped):
    data = load_dataset(SAMPLES)
    cropped = shipped.with_preprocessing(shipped.metadata.preprocessing.without_crop())
    paths = [*data.split("val").paths, *data.split("test").paths]  # not used in training
    hits = sum(p.label == path.parent.name for p, path in zip(cropped.predict_batch(paths), paths, strict=True))
    assert hits >= 61, f"{hits}/64 held-out sample crops correct; the model card's test accuracy is ~99 %"


def test_classifies_raw_microscope_originals(shipped):
    paths = load_dataset(RAW_SAMPLES).split("all").paths
    hits = sum(shipped.predict(path).label == path.parent.name for path in paths)
    assert len(paths) == 16 and hits >= 14, f"{hits}/16 raw originals correct"


def test_sha256_matches_the_model_card():
    card = (REPO / "MODEL_CARD.md").read_text()
    for path in (default_model_path(), CHECKPOINT):
        lines = [line for line in card.splitlines() if path.name in line and re.search(r"\b[0-9a-f]{64}\b", line)]
        assert lines, f"MODEL_CARD.md lists no sha256 for {path.name}"
        assert all(sha256(path) in line for line in lines), f"{path.name}: sha256 differs from MODEL_CARD.md"


def test_cli_predict_without_model():
    from click.testing import CliRunner

    from cellsdk.cli import cli

    image = next((RAW_SAMPLES / "neutrophil").glob("*.jpg"))
    result = CliRunner().invoke(cli, ["predict", str(image), "--json"])
    assert result.exit_code == 0, result.output
    assert '"label": ' in result.output and DEFAULT_MODEL in result.output


def test_default_load_is_torch_free():
    code = ("import sys, cellsdk; c = cellsdk.Classifier.load(); "
            f"print(c.predict({str(next((RAW_SAMPLES / 'ig').glob('*.jpg')))!r}).label, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "False"


def test_missing_package_data_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("cellsdk.artefacts.resolve.DEFAULT_MODEL", "absent.onnx")
    with pytest.raises(ModelNotFoundError, match="not installed with this cellsdk"):
        cellsdk.Classifier.load()


def test_shipped_model_carries_the_guard(shipped):
    """The shipped model flags altered copies of the sample originals and keeps the originals (MODEL_CARD.md)."""
    import numpy as np
    from PIL import Image

    from cellsdk.converters.shifts import apply_shift

    guard = shipped.guard
    assert guard is not None and guard.score.name == "mahalanobis" and guard.retention == 0.95
    assert shipped.metadata.outputs == ("logits", "features", "cams")  # cams: class activation maps (issue 15)
    validation = shipped.metadata.guard["validation"]
    assert validation["mean_auroc"] > 0.9 and set(validation["candidates"]) == {"msp", "energy", "mahalanobis", "knn"}
    raw = sorted(RAW_SAMPLES.rglob("*.jpg"))
    kept = [p.ok for p in shipped.predict_batch(raw)]
    assert np.mean(kept) >= 0.75
    original = Image.open(raw[0]).convert("RGB")
    altered = [apply_shift(name, original) for name in ("hue_shift", "blur", "overexposed", "scale_2")]
    assert all(p.status == "out_of_distribution" for p in shipped.predict_batch(altered))


def test_carries_test_vectors_and_passes_its_self_check_here(shipped):
    """The shipped file checks itself wherever it lands: 32 held-out crops with the fp32 outputs, run here now."""
    from cellsdk.artefacts.selfcheck import self_check
    from cellsdk.testvectors import TestVectors, size_budget

    meta = shipped.metadata
    vectors = TestVectors.from_dict(meta.test_vectors)
    size = default_model_path().stat().st_size
    assert meta.schema_version == 5 and len(vectors) == 32 and vectors.nbytes() <= size_budget(size - vectors.nbytes())
    assert sorted(np.bincount(vectors.targets)) == [4] * 8  # class-balanced
    verdict = self_check(shipped, refresh=True)
    assert verdict.status == "passed", verdict.describe()
    assert verdict.figures["top1_agreement"] == 1.0 and verdict.figures["logit_cosine"] > 0.99

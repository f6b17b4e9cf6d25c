"""ExecuTorch (.pte): converted through the same gate as every format, metadata in a slot inside the program."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cellsdk import Classifier
from cellsdk.backends.executorch import PTE_MAGIC, find_pte_metadata, read_pte_metadata
from cellsdk.errors import BackendNotInstalledError, MetadataError, UnsupportedFormatError
from cellsdk.preprocessing import preprocess_batch
from tests.conftest import RAW_SAMPLES
from tests.export_helpers import convert_tiny

needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="executorch is not installed: pip install 'cellsdk[executorch]'")


@pytest.fixture(scope="module")
def pte_conversion(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint converted to ONNX and ExecuTorch fp32 through the gate."""
    if importlib.util.find_spec("executorch") is None:
        pytest.skip("executorch is not installed: pip install 'cellsdk[executorch]'")
    return convert_tiny(tiny_checkpoint, tmp_path_factory.mktemp("executorch") / "out", ("onnx", "executorch"))


@pytest.mark.slow  # a conversion (~30 s)
@needs_executorch
def test_an_executorch_program_passes_the_gate_and_answers_like_onnx(pte_conversion):
    entry = next(a for a in pte_conversion.manifest["artefacts"] if a["file"] == "model.fp32.pte")
    assert entry["status"] == "passed", entry["reasons"]
    assert entry["backend"] == "executorch" and entry["self_check"]["status"] == "passed"
    pte = Classifier.load(pte_conversion.out_dir / "model.fp32.pte")
    onnx = Classifier.load(pte_conversion.out_dir / "model.fp32.onnx")
    assert pte.backend_name == "executorch" and pte.verification.status == "passed"
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))
    assert np.abs(pte.predict_proba(images) - onnx.predict_proba(images)).max() < 1e-4
    assert pte.guard is not None and pte.backend.max_batch == 1 and pte.metadata.labels == onnx.metadata.labels


@pytest.mark.slow  # an export, a calibration and a lowering (~60 s)
@needs_executorch
def test_an_int8_program_passes_the_gate_and_keeps_float_inputs_and_outputs(tiny_checkpoint, tmp_path):
    result = convert_tiny(tiny_checkpoint, tmp_path / "out", ("executorch",), ("int8",))
    entries = {a["file"]: a for a in result.manifest["artefacts"]}
    assert entries["model.int8.pte"]["status"] == "passed", entries["model.int8.pte"]["reasons"]
    int8 = Classifier.load(result.out_dir / "model.int8.pte")
    fp32 = Classifier.load(result.out_dir / "model.fp32.pte")
    quantization = int8.metadata.quantization
    assert "XNNPACKQuantizer" in quantization["method"] and quantization["calibration_images"] > 0
    assert quantization["saturation_safe"] is True and int8.metadata.precision == "int8"
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))
    batch = preprocess_batch(images, fp32.metadata.preprocessing)
    logits, reference = int8.raw_outputs(batch), fp32.raw_outputs(batch)
    assert logits.dtype == np.float32
    cosine = (logits * reference).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9


@pytest.mark.slow
@needs_executorch
def test_the_metadata_slot_is_rewritten_in_place_and_refuses_what_does_not_fit(pte_conversion, tmp_path):
    from cellsdk.converters import get_converter
    from cellsdk.converters.executorch import write_pte_metadata

    copy = tmp_path / "copy.pte"
    copy.write_bytes((pte_conversion.out_dir / "model.fp32.pte").read_bytes())
    size = copy.stat().st_size
    metadata = Classifier.load(copy).metadata
    get_converter("executorch").write_metadata(copy, metadata.replace(arch="renamed"))
    assert Classifier.load(copy).metadata.arch == "renamed" and copy.stat().st_size == size  # in place
    _, _, capacity = find_pte_metadata(copy.read_bytes(), copy)
    with pytest.raises(MetadataError, match="re-convert"):
        write_pte_metadata(copy, "x" * (capacity + 1))
    assert Classifier.load(copy).metadata.arch == "renamed"  # a refused write loses nothing


def test_a_slot_is_found_once_and_a_damaged_one_is_named():
    slot = PTE_MAGIC + (8).to_bytes(8, "little") + (2).to_bytes(8, "little") + b"{}" + bytes(6)
    assert find_pte_metadata(b"head" + slot + b"tail") == (4 + 32, 2, 8)
    assert find_pte_metadata(b"no slot here") is None
    with pytest.raises(MetadataError, match="more than one"):
        find_pte_metadata(slot + slot)
    with pytest.raises(MetadataError, match="damaged"):
        find_pte_metadata(PTE_MAGIC + (8).to_bytes(8, "little") + (99).to_bytes(8, "little") + bytes(8))


def test_a_program_without_a_slot_has_no_metadata(tmp_path):
    path = tmp_path / "bare.pte"
    path.write_bytes(b"\x00" * 64)
    assert read_pte_metadata(path) is None


@needs_executorch
def test_a_file_that_is_not_a_program_is_refused_in_one_line(tmp_path):
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"not a program at all")
    with pytest.raises(UnsupportedFormatError, match="not a loadable ExecuTorch program"):
        Classifier.load(junk, labels=["a", "b"], preprocessing={"input_size": 8})


def test_without_the_runtime_the_error_names_the_extra(tmp_path, monkeypatch):
    from cellsdk.backends import executorch

    model = tmp_path / "model.pte"
    model.write_bytes(b"\x00" * 16)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(BackendNotInstalledError, match=r"cellsdk\[executorch\]"):
        executorch.ExecuTorchBackend(Path(model))

"""LiteRT (.tflite): converted through the same gate as every format, run torch-free, metadata inside the file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellsdk import Classifier
from cellsdk.errors import BackendNotInstalledError, MetadataError, UnsupportedFormatError
from cellsdk.preprocessing import preprocess_batch
from tests.conftest import RAW_SAMPLES, REPO
from tests.export_helpers import convert_tiny

needs_runtime = pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None,
                                   reason="ai-edge-litert is not installed: pip install 'cellsdk[litert]'")
needs_converter = pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None,
                                     reason="litert-torch is not installed: scripts/setup.sh installs it")


@pytest.fixture(scope="module")
def litert_conversion(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint converted to ONNX and LiteRT fp32 through the gate."""
    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("litert-torch is not installed: scripts/setup.sh installs it")
    return convert_tiny(tiny_checkpoint, tmp_path_factory.mktemp("litert") / "out", ("onnx", "litert"))


@pytest.fixture(scope="module")
def quantized_litert(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint converted to LiteRT fp32, fp16 and int8 (calibrated on the samples) through the gate."""
    if importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("ai_edge_quantizer") is None:
        pytest.skip("litert-torch / ai-edge-quantizer are not installed: scripts/setup.sh installs them")
    return convert_tiny(tiny_checkpoint, tmp_path_factory.mktemp("litert-q") / "out", ("litert",), ("fp16", "int8"))


@pytest.mark.slow  # a conversion (~30 s)
@needs_converter
def test_a_litert_artefact_passes_the_gate_and_answers_like_onnx(litert_conversion):
    entry = next(a for a in litert_conversion.manifest["artefacts"] if a["file"] == "model.fp32.tflite")
    assert entry["status"] == "passed", entry["reasons"]
    assert entry["backend"] == "litert" and entry["self_check"]["status"] == "passed"
    tflite = Classifier.load(litert_conversion.out_dir / "model.fp32.tflite")
    onnx = Classifier.load(litert_conversion.out_dir / "model.fp32.onnx")
    assert tflite.backend_name == "litert" and tflite.metadata == onnx.metadata.replace(
        test_vectors=tflite.metadata.test_vectors, cpu_verification=tflite.metadata.cpu_verification)
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))
    a, b = tflite.predict_proba(images), onnx.predict_proba(images)
    assert np.abs(a - b).max() < 1e-4
    assert tflite.guard is not None and tflite.explain(images[0]).cam.shape == onnx.explain(images[0]).cam.shape
    assert tflite.backend.max_batch == 1 and tflite.predict_proba(images[:5]).shape == (5, len(tflite.labels))


@pytest.mark.slow  # three conversions and a calibration (~40 s)
@needs_converter
def test_litert_fp16_and_full_integer_int8_pass_the_gate_and_answer_in_float(quantized_litert):
    from ai_edge_litert.interpreter import Interpreter

    entries = {a["file"]: a for a in quantized_litert.manifest["artefacts"]}
    for name in ("model.fp32.tflite", "model.fp16.tflite", "model.int8.tflite"):
        assert entries[name]["status"] == "passed", (name, entries[name]["reasons"])
    int8_path = quantized_litert.out_dir / "model.int8.tflite"
    interpreter = Interpreter(model_path=str(int8_path))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8  # full integer: the image goes in as int8
    assert {d["dtype"] for d in interpreter.get_output_details()} == {np.int8}
    fp32, int8 = (Classifier.load(quantized_litert.out_dir / n) for n in ("model.fp32.tflite", "model.int8.tflite"))
    quantization = int8.metadata.quantization
    assert quantization["calibration_images"] > 0 and quantization["saturation_safe"] is True
    assert "static_wi8_ai8" in quantization["method"]
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))
    batch = preprocess_batch(images, fp32.metadata.preprocessing)
    logits, reference = int8.raw_outputs(batch), fp32.raw_outputs(batch)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    cosine = (logits * reference).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9  # dequantized logits, not raw int8 codes
    assert int8.guard is not None and int8.explain(images[0]).cam.shape == fp32.explain(images[0]).cam.shape


@pytest.mark.slow  # two emulated self-checks (~30 s)
@needs_converter
@pytest.mark.parametrize("target", ["haswell", "neoverse-n1"])
def test_the_int8_file_passes_its_self_check_on_emulated_cpu_classes(quantized_litert, target):
    """XNNPACK's int8 kernels do not saturate: the same file passes on AVX2 and on ARM64 (the aarch64 environment
    runs ai-edge-litert 1.4, PyPI's newest aarch64 wheel)."""
    from cellsdk.converters.emulation import EMULATED, cannot_run_there, self_check_emulated

    path = quantized_litert.out_dir / "model.int8.tflite"
    problem = cannot_run_there(target, path)
    if problem:
        pytest.skip(problem)
    verdict = self_check_emulated(path, target)
    assert verdict["status"] == "passed", verdict
    assert verdict["machine"]["cpu_class"] == EMULATED[target][1]


@pytest.mark.slow
@needs_converter
def test_litert_runs_with_torch_blocked(litert_conversion):
    path = litert_conversion.out_dir / "model.fp32.tflite"
    code = ("import sys\n"
            "for name in ('torch', 'timm', 'torchvision', 'litert_torch', 'jax'):\n"
            "    sys.modules[name] = None  # any import of them now raises ImportError\n"
            "import cellsdk\n"
            f"clf = cellsdk.Classifier.load({str(path)!r})\n"
            f"print(clf.predict({str(sorted(RAW_SAMPLES.rglob('*.jpg'))[0])!r}).label, clf.backend_name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "litert"


@pytest.mark.slow
@needs_converter
def test_the_metadata_is_replaced_in_place_and_a_file_without_it_asks_for_labels(litert_conversion, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    from cellsdk.backends.litert import read_tflite_metadata
    from cellsdk.converters import get_converter

    source = litert_conversion.out_dir / "model.fp32.tflite"
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(source.read_bytes())
    metadata = Classifier.load(copy).metadata
    get_converter("litert").write_metadata(copy, metadata.replace(arch="renamed"))
    assert Classifier.load(copy).metadata.arch == "renamed"
    model = flatbuffer_utils.read_model(str(copy))
    assert sum(1 for m in model.metadata if m.name in (b"cellsdk", "cellsdk")) == 1  # replaced, not appended
    model.metadata = [m for m in model.metadata if m.name not in (b"cellsdk", "cellsdk")]
    bare = tmp_path / "bare.tflite"
    flatbuffer_utils.write_model(model, str(bare))
    assert read_tflite_metadata(bare) is None
    with pytest.raises(MetadataError, match="no cellsdk metadata"):
        Classifier.load(bare)


@needs_runtime
def test_a_file_that_is_not_a_litert_model_is_refused_in_one_line(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(UnsupportedFormatError, match="not a LiteRT"):
        Classifier.load(junk)


def test_without_the_runtime_the_error_names_the_extra(tmp_path, monkeypatch):
    from cellsdk.backends import litert

    model = tmp_path / "model.tflite"
    model.write_bytes(b"\x00" * 16)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else real(name, *a))
    with pytest.raises(BackendNotInstalledError, match=r"cellsdk\[litert\]"):
        litert.LiteRtBackend(Path(model))


@pytest.mark.slow
@needs_converter
def test_cellsdk_serve_answers_with_the_int8_litert_file(quantized_litert):
    """The service over a real loopback port, batching requests for a batch-of-one full-integer model."""
    pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
    httpx = pytest.importorskip("httpx", reason="the HTTP tests need httpx (cellsdk[test])")
    from cellsdk.serve.process import start_service

    path = quantized_litert.out_dir / "model.int8.tflite"
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))[:4]
    expected = [p.label for p in Classifier.load(path).predict_batch(images)]
    service = start_service(("--model", str(path), "--max-wait-ms", "20"), cwd=REPO)
    try:
        response = httpx.post(service.url + "v1/predict", timeout=60,
                              files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images])
        response.raise_for_status()
        body = response.json()
        assert body["model"]["name"] == "model.int8.tflite"
        assert [p["label"] for p in body["predictions"]] == expected
        assert all(p["ood_score"] is not None for p in body["predictions"])
    finally:
        assert service.stop() == 0, "\n".join(service.lines)

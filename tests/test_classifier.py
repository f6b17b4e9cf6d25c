"""The runtime Classifier, parametrised over every registered backend."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from cellsdk import Classifier, Prediction
from cellsdk.backends import backend_names, get_backend
from cellsdk.errors import (
    BackendNotInstalledError,
    ConfigError,
    InvalidImageError,
    MetadataError,
    ModelNotFoundError,
    PlatformNotSupportedError,
    UnsupportedFormatError,
)
from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import preprocess
from tests.conftest import SAMPLES

IMAGES = sorted(SAMPLES.glob("test/*/*.jpg"))


def _skip_unless_runs(name: str, artefacts) -> None:
    reason = get_backend(name).unavailable_reason()
    if reason:
        pytest.skip(reason)
    if name not in artefacts:
        pytest.skip(f"no {name} exporter installed")


@pytest.fixture(scope="module")
def reference(tiny_run):
    """Probabilities of the PyTorch checkpoint on the sample test images."""
    from cellsdk.training import load_checkpoint

    model, metadata = load_checkpoint(tiny_run.best_checkpoint)
    batch = torch.from_numpy(np.stack([preprocess(p, metadata.preprocessing) for p in IMAGES]))
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1).numpy(), metadata


@pytest.fixture(scope="module", params=backend_names())
def classifier(request, artefacts):
    _skip_unless_runs(request.param, artefacts)
    options = {"precision": "f32"} if request.param == "openvino" else {}
    return Classifier.load(artefacts[request.param], device="cpu", **options)


def test_same_top1_as_pytorch_and_probabilities_sum_to_one(classifier, reference):
    expected, _ = reference
    got = classifier.predict_proba(IMAGES)
    assert got.shape == expected.shape
    assert np.allclose(got.sum(axis=1), 1.0)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(got - expected).max() < 1e-4


def test_metadata_round_trips(classifier, reference):
    _, metadata = reference
    assert classifier.metadata == metadata
    assert classifier.labels == metadata.labels


def test_every_input_kind_gives_the_same_answer(classifier):
    path = IMAGES[3]
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    sources = [path, str(path), path.read_bytes(), pil, array, array.astype(np.float32) / 255.0]
    probabilities = [classifier.predict_proba(s) for s in sources]
    for p in probabilities[1:]:
        assert np.allclose(p, probabilities[0], atol=1e-5)
    prediction = classifier.predict(path, top_k=3)
    assert isinstance(prediction, Prediction)
    assert prediction.label == prediction.top_k[0][0] == classifier.labels[prediction.index]
    assert prediction.confidence == max(prediction.probabilities.values())
    assert len(prediction.top_k) == 3 and prediction.top_k[0][1] >= prediction.top_k[1][1] >= prediction.top_k[2][1]
    for odd in (np.zeros((40, 40), np.uint8), np.zeros((40, 40, 4), np.uint8), Image.new("LA", (9, 9))):
        assert np.isclose(classifier.predict_proba(odd).sum(), 1.0)


def test_batches_agree_with_single_predictions(classifier):
    single = np.stack([classifier.predict_proba(p) for p in IMAGES[:7]])
    for batch_size in (1, 3, 32):
        assert np.allclose(classifier.predict_proba(IMAGES[:7], batch_size=batch_size), single, atol=1e-5)
    predictions = classifier.predict_batch(IMAGES[:7], batch_size=4)
    assert [p.label for p in predictions] == [classifier.labels[i] for i in single.argmax(axis=1)]
    stacked = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in IMAGES[:3]])
    assert classifier.predict_proba(stacked).shape == (3, 8)
    assert classifier.predict_batch([]) == []


def test_concurrent_calls_agree_with_sequential(classifier):
    sources = IMAGES * 2
    sequential = [classifier.predict(p).probabilities for p in sources]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda p: classifier.predict(p).probabilities, sources))
    for a, b in zip(sequential, concurrent, strict=True):
        assert np.allclose(list(a.values()), list(b.values()), atol=1e-6)


def test_bad_inputs_name_the_input(classifier, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InvalidImageError, match=r"broken\.jpg"):
        classifier.predict(broken)
    with pytest.raises(InvalidImageError, match="no such file"):
        classifier.predict(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match=r"input 1: <array"):
        classifier.predict_batch([IMAGES[0], np.zeros((2, 2, 7), np.uint8)])
    with pytest.raises(InvalidImageError, match="unsupported input type"):
        classifier.predict(12345)  # type: ignore[arg-type]


# ------------------------------------------------------------------ loading


def test_folder_with_manifest_picks_a_verified_artefact(artefacts):
    folder = artefacts["onnxruntime"].parent
    clf = Classifier.load(folder)
    assert clf.path.name == "model.onnx" and "onnxruntime" in clf.chosen and "runs here" in clf.chosen


def test_manifest_ranking_and_refusals(artefacts, tmp_path):
    import json
    import shutil

    from cellsdk.artefacts.manifest import choose_artefact

    for name in ("model.onnx", "model.torchscript"):
        shutil.copy(artefacts["onnxruntime"].parent / name, tmp_path / name)
    entries = [
        {"file": "model.onnx", "precision": "fp32", "status": "passed", "latency_ms": 9.0},
        {"file": "model.torchscript", "precision": "fp32", "status": "passed", "latency_ms": 3.0},
        {"file": "model.int8.onnx", "precision": "int8", "status": "failed", "latency_ms": 1.0},
        {"file": "model.mlpackage", "precision": "fp16", "status": "not verified on this platform"},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"artefacts": entries}))
    path, why, options = choose_artefact(tmp_path)
    assert path.name == "model.torchscript" and "3.00 ms" in why and options == {}
    for entry in entries[:2]:
        entry["status"] = "failed"
    (tmp_path / "manifest.json").write_text(json.dumps({"artefacts": entries}))
    with pytest.raises(UnsupportedFormatError, match=r"no verified artefact runs on this platform.*model.int8.onnx: failed"):
        Classifier.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(MetadataError, match="unreadable manifest"):
        Classifier.load(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(UnsupportedFormatError, match=r"without manifest\.json"):
        Classifier.load(tmp_path)


def test_model_without_metadata(tiny_run, tmp_path):
    from cellsdk.training import load_checkpoint
    from tests.export_helpers import export_onnx

    model, metadata = load_checkpoint(tiny_run.best_checkpoint)
    bare = export_onnx(model.eval(), None, tmp_path / "bare.onnx")
    with pytest.raises(MetadataError, match="carries no cellsdk metadata; pass labels"):
        Classifier.load(bare)
    clf = Classifier.load(bare, labels=metadata.labels, preprocessing={"input_size": 32})
    assert clf.predict(IMAGES[0]).label in metadata.labels
    with pytest.raises(MetadataError, match="8 outputs but the metadata lists 3 labels"):
        Classifier.load(bare, labels=["a", "b", "c"], preprocessing=Preprocessing(input_size=32))


def test_inconsistent_metadata_is_refused(artefacts):
    onnx_path = artefacts["onnxruntime"]
    with pytest.raises(MetadataError, match="takes 32x32 inputs but its metadata says 64x64"):
        Classifier.load(onnx_path, preprocessing=Preprocessing(input_size=64))
    with pytest.raises(MetadataError, match="8 outputs"):
        Classifier.load(onnx_path, labels=["a", "b"])


def test_load_errors(tmp_path, tiny_run):
    with pytest.raises(ModelNotFoundError, match="no such model"):
        Classifier.load(tmp_path / "nothing.onnx")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(UnsupportedFormatError, match=r"unsupported model format \.h5.*\.onnx"):
        Classifier.load(tmp_path / "weights.h5")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(UnsupportedFormatError, match="not a loadable ONNX model"):
        Classifier.load(tmp_path / "junk.onnx")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(UnsupportedFormatError, match="not a TorchScript archive"):
        Classifier.load(tmp_path / "state.pt")
    with pytest.raises(UnsupportedFormatError, match="unknown backend 'tensorflow'"):
        Classifier.load(tmp_path / "junk.onnx", backend="tensorflow")
    with pytest.raises(ConfigError, match=r"device 'cuda': the onnxruntime installed \(.*\) is the CPU build: "
                                          r"pip install 'cellsdk\[cuda\]'"):
        if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
            pytest.skip("this onnxruntime is the GPU build (tests/test_gpu.py covers it)")
        Classifier.load(tmp_path / "junk.onnx", device="cuda")


def test_openvino_xml_without_bin(artefacts, tmp_path):
    if "openvino" not in artefacts:
        pytest.skip("openvino is not installed")
    lonely = tmp_path / "model.xml"
    lonely.write_bytes(artefacts["openvino"].read_bytes())
    with pytest.raises(UnsupportedFormatError, match=r"model\.bin is missing"):
        Classifier.load(lonely)


def test_missing_backend_package_names_the_extra(artefacts, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'cellsdk\[openvino\]'"):
        Classifier.load(artefacts["onnxruntime"].with_suffix(".xml"))
    assert "not installed" in get_backend("openvino").unavailable_reason()


@pytest.mark.skipif(sys.platform == "darwin", reason="CoreML runs on macOS")
def test_coreml_off_macos_says_which_formats_run_here(artefacts):
    if "coreml" not in artefacts:
        pytest.skip("coremltools is not installed")
    with pytest.raises(PlatformNotSupportedError, match=r"only on macOS.*\.onnx.*\.xml.*\.torchscript"):
        Classifier.load(artefacts["coreml"])
    import coremltools as ct

    stored = ct.models.MLModel(str(artefacts["coreml"]), skip_model_load=True).user_defined_metadata["cellsdk"]
    assert '"labels"' in stored  # the metadata slot is written even where it cannot run


def test_prediction_repr_and_dict(artefacts):
    clf = Classifier.load(artefacts["onnxruntime"], top_k=2)
    assert "onnxruntime" in repr(clf) and "8 classes" in repr(clf)
    data = clf.predict(IMAGES[0]).to_dict()
    assert len(data["top_k"]) == 2 and set(data["probabilities"]) == set(clf.labels)
    buffer = io.BytesIO()
    Image.open(IMAGES[0]).save(buffer, format="PNG")
    assert clf.predict(buffer.getvalue()).label == clf.predict(IMAGES[0]).label


def test_overhead_measurement_runs(artefacts):
    from cellsdk.benchmarks.overhead import measure_overhead

    models = [artefacts[name] for name in ("onnxruntime", "openvino", "torchscript") if name in artefacts]
    rows = measure_overhead(models, IMAGES[0], iterations=3, warmup=1, options={"openvino": {"precision": "f32"}})
    assert [r["model"] for r in rows] == [str(m) for m in models]
    for row in rows:
        assert row["same_top1"] and row["classifier_ms"] > 0 and row["hand_written_ms"] > 0
        assert row["ratio"] == row["classifier_ms"] / row["hand_written_ms"]

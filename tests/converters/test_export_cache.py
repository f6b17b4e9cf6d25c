"""The fp32 ONNX export cache (cellsdk.converters.export_cache): the same weights are exported once."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the converters need torch")

from cellsdk.converters import ConvertConfig, VerifyConfig, convert, export_cache  # noqa: E402
from tests.conftest import SAMPLES, TINY_CHECKPOINT  # noqa: E402


def test_the_key_follows_the_weights_the_outputs_and_the_batch_dimension():
    layer = torch.nn.Linear(3, 2)
    key = export_cache.export_key(layer, ("logits",), dynamic_batch=True, input_size=8)
    assert key == export_cache.export_key(layer, ("logits",), dynamic_batch=True, input_size=8)
    assert key != export_cache.export_key(layer, ("logits", "features"), dynamic_batch=True, input_size=8)
    assert key != export_cache.export_key(layer, ("logits",), dynamic_batch=False, input_size=8)
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    assert key != export_cache.export_key(layer, ("logits",), dynamic_batch=True, input_size=8)


def test_store_keeps_the_newest_and_fetch_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSDK_EXPORT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "export.onnx"
    for index in range(export_cache.MAX_ENTRIES + 2):
        source.write_bytes(bytes([index]) * 10)
        export_cache.store(f"k{index}", source)
    kept = sorted(p.stem for p in (tmp_path / "cache").glob("*.onnx"))
    assert len(kept) == export_cache.MAX_ENTRIES and "k0" not in kept
    target = tmp_path / "fp32.onnx"
    assert export_cache.fetch(f"k{export_cache.MAX_ENTRIES + 1}", target)
    assert target.read_bytes() == bytes([export_cache.MAX_ENTRIES + 1]) * 10
    assert not export_cache.fetch("k0", target)
    monkeypatch.setenv("CELLSDK_EXPORT_CACHE", "0")
    assert export_cache.cache_folder() is None and not export_cache.fetch("k5", target)


def test_a_second_conversion_of_the_same_checkpoint_reuses_the_export_and_answers_alike(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSDK_EXPORT_CACHE", str(tmp_path / "cache"))
    config = ConvertConfig(formats=("onnx",), precisions=(), calib=str(SAMPLES), data_cropped=True, test_vectors=0,
                           verify=VerifyConfig(latency_runs=0))
    first = convert(TINY_CHECKPOINT, tmp_path / "a", config, progress=False)
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1
    exports = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: exports.append(1) or real_export(*args, **kwargs))
    second = convert(TINY_CHECKPOINT, tmp_path / "b", config, progress=False)
    assert exports == []  # torch.onnx.export was not called again
    assert [a["status"] for a in second.manifest["artefacts"]] == [a["status"] for a in first.manifest["artefacts"]]
    from cellsdk import Classifier

    image = np.asarray(__import__("PIL.Image").Image.open(next(SAMPLES.glob("val/*/*.jpg"))))
    a = Classifier.load(tmp_path / "a" / "model.fp32.onnx", self_check=False).predict_proba(image)
    b = Classifier.load(tmp_path / "b" / "model.fp32.onnx", self_check=False).predict_proba(image)
    np.testing.assert_allclose(a, b, atol=1e-6)

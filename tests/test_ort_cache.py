"""The cached optimised ONNX Runtime graph: written by the first CPU session, loaded by the next, same numbers."""

from __future__ import annotations

import numpy as np

from cellsdk import Classifier
from tests.conftest import RAW_SAMPLES


def _entries(cache):
    folder = cache / "ort-optimised"
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


def test_a_second_load_uses_the_cached_graph_and_gives_the_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path))
    images = sorted(RAW_SAMPLES.glob("*/*.jpg"))[:4]
    first = Classifier.load(device="cpu", self_check=False)
    assert len(_entries(tmp_path)) == 1 and not list((tmp_path / "ort-optimised").glob(".*"))  # no temporary left
    second = Classifier.load(device="cpu", self_check=False)
    assert np.array_equal(first.predict_proba(images), second.predict_proba(images))
    assert second.metadata == first.metadata  # the cached graph keeps the cellsdk metadata


def test_a_damaged_cache_entry_is_replaced_and_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path))
    image = sorted(RAW_SAMPLES.glob("*/*.jpg"))[0]
    reference = Classifier.load(device="cpu", self_check=False).predict_proba(image)
    (entry,) = _entries(tmp_path)
    entry.write_bytes(b"not an onnx graph")
    assert np.array_equal(Classifier.load(device="cpu", self_check=False).predict_proba(image), reference)
    assert entry.stat().st_size > 1000  # written again
    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path / "off"))
    monkeypatch.setenv("CELLSDK_ORT_CACHE", "0")
    Classifier.load(device="cpu", self_check=False)
    assert _entries(tmp_path / "off") == []

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # runs the examples end to end (conversion, training)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_the_shipped_model(tmp_path, capsys):
    report = _load("quickstart").main(["--formats", "onnx", "--iterations", "3", "--quiet",
                                       "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "raw microscope originals (16 images" in out and "BloodMNIST-128 sample test crops" in out
    assert report["raw_accuracy"] >= 14 / 16 and report["crops_accuracy"] >= 30 / 32
    assert report["job"] == {**report["job"], "rows": 16, "same_labels": True} and "as a large job" in out
    statuses = {a["file"]: a["status"] for a in report["conversion"]["artefacts"]}
    assert statuses.get("model.int8.onnx") == "passed", statuses
    assert "pytorch-eager" in out and (tmp_path / "run" / "bench" / "results.json").is_file()
    assert all(r.get("ok") for r in report["benchmark"]["rows"])
    assert "bioimageio" not in report and "--all packs and tests one" in out  # the package: --all only


def test_train_on_samples_runs(tmp_path, capsys):
    # CPU classes under emulation are tested in test_cpu_targets.py, every format in tests/converters; here the
    # plumbing: this machine's class, ONNX
    report = _load("train_on_samples").main(["--tiny", "--epochs", "1", "--quiet", "--verify-cpus", "native",
                                             "--formats", "onnx", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert report["n"] == 32 and "test split, 32 images" in out and "raw 360x363" in out
    assert (tmp_path / "run" / "eval" / "confusion_matrix.png").is_file()
    assert "model.int8.onnx" in out and (tmp_path / "run" / "converted" / "manifest.json").is_file()
    statuses = {a["status"] for a in report["conversion"]["artefacts"]}
    assert statuses <= {"passed", "failed", "skipped", "not verified on this platform"}
    assert "pytorch-eager" in out and (tmp_path / "run" / "bench" / "results.json").is_file()
    assert all(r.get("ok") for r in report["benchmark"]["rows"])

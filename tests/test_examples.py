from __future__ import annotations

import importlib.util

from .conftest import REPO


def test_quickstart_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--tiny", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert report["n"] == 32 and "test split, 32 images" in out and "raw 360x363" in out
    assert (tmp_path / "run" / "eval" / "confusion_matrix.png").is_file()
    assert "model.int8.onnx" in out and (tmp_path / "run" / "converted" / "manifest.json").is_file()
    statuses = {a["status"] for a in report["conversion"]["artefacts"]}
    assert statuses <= {"passed", "failed", "skipped", "not verified on this platform"}
    assert "pytorch-eager" in out and (tmp_path / "run" / "bench" / "results.json").is_file()
    assert all(r.get("ok") for r in report["benchmark"]["rows"])

"""cellsdk-bench --throughput: every engine and the hand-written reference, run for real on the sample images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cellsdk.benchmarks.throughput import ThroughputConfig, default_splits, format_throughput, run_throughput
from cellsdk.cli import bench_command
from cellsdk.errors import ConfigError
from tests.conftest import RAW_SAMPLES


def test_the_reference_pipeline_imports_no_cellsdk():
    """It is what a user writes without cellsdk: run as a script, it must not load any cellsdk module."""
    from cellsdk.benchmarks.throughput import _reference_script

    code = ("import runpy, sys; sys.argv = ['x', '-h']\n"
            f"try:\n    runpy.run_path({_reference_script()!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('cellsdk')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_throughput_report_rows_ratios_and_label_agreement(tmp_path):
    from cellsdk.artefacts.resolve import default_model_path

    other = default_model_path()  # another artefact of the model: here the same file, run as a second engine
    report = run_throughput(ThroughputConfig(folder=str(RAW_SAMPLES), splits=((1, 1),), ray_actors=(), rounds=1,
                                             repeat=2, others=(str(other),)))
    engines = [(row["engine"], row["split"]) for row in report["rows"]]
    assert engines[0] == ("reference", "1 decode / 1 runtime") and ("local", "1 decode / 1 runtime") in engines
    assert ("local", f"default, {other.name} (onnxruntime)") in engines
    assert ("local", f"default, {other.name} (onnxruntime), --ood off") in engines
    assert any(row.get("default") for row in report["rows"])
    for row in report["rows"]:
        assert row["images"] == 32 and row["images_per_s"] > 0 and row["seconds"] > 0
        assert row["labels_match_reference"] == 1.0  # every engine gives the reference's labels
        assert row["peak_mb"] is None or row["peak_mb"] > 10
    assert report["ratios"]["local_best_vs_reference_best"] > 0 and report["ratios"]["ray_best_vs_reference_best"] is None
    text = format_throughput(report)
    assert "reference" in text and "local best vs reference best" in text and report["machine"]["cpu_class"] in text


def test_cli_throughput_writes_json_and_refuses_bad_options(tmp_path):
    result = CliRunner().invoke(bench_command, ["--throughput", str(RAW_SAMPLES), "--splits", "1x1", "--ray-actors",
                                                "none", "--rounds", "1", "--quiet", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "throughput.json").read_text())["rows"]
    for args, message in ((["--splits", "1x2x3"], "DECODExRUNTIME"), (["--splits", "ax1"], "use e.g."),
                          (["--ray-actors", "two"], "use e.g."), (["a.onnx", "b.onnx"], "no such model")):
        bad = CliRunner().invoke(bench_command, ["--throughput", str(RAW_SAMPLES), *args])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output
    assert "give MODELS" in CliRunner().invoke(bench_command, []).output
    with pytest.raises(ConfigError, match="rounds"):
        ThroughputConfig(folder=".", rounds=0)


def test_default_splits_cover_the_cores():
    assert default_splits(2) == ((1, 1), (1, 2), (2, 1), (2, 2))
    assert all(d >= 1 and r >= 1 for d, r in default_splits(16))

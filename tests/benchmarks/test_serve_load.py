"""The load-test harness (benchmarks/serve_load.py) runs end to end: a real service, real clients, a report.

Behaviour only (every answer correct, the service stops cleanly, the report complete); the figures are the
benchmark's business (``cellsdk-bench --serve-load``), never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
pytest.importorskip("uvicorn", reason="the service needs cellsdk[serve]")

from cellsdk.benchmarks.serve_load import ServeLoadConfig, format_serve_load, run_serve_load
from cellsdk.errors import ConfigError
from tests.conftest import RAW_SAMPLES, REPO

pytestmark = pytest.mark.slow  # load-tests a started service


def test_a_short_load_run_reports_both_modes_without_errors() -> None:
    report = run_serve_load(ServeLoadConfig(folder=str(RAW_SAMPLES), duration=1.5, clients=4, warmup=8))
    assert [row["mode"] for row in report["rows"]] == ["micro-batching", "no batching"]
    for row in report["rows"]:
        assert row["errors"] == 0, row["error_kinds"]
        assert row["answered"] > 0 and row["service_exit_code"] == 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["ratio_to_in_process"] > 0
    assert report["rows"][1]["mean_batch"] == 1.0  # --max-batch 1: never more than one image per call
    assert report["machine"]["cpu_class"] and report["in_process_images_per_s"]["median"] > 0
    table = format_serve_load(report)
    assert "| micro-batching |" in table and "in-process predict_batch" in table


def test_the_cli_writes_the_report_and_refuses_an_empty_folder(tmp_path) -> None:
    command = [sys.executable, "-c", "from cellsdk.cli import bench_command; bench_command()"]
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([*command, "--serve-load", str(empty)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "no image files" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ConfigError, match="clients must be"):
        ServeLoadConfig(folder=".", clients=0)
    done = subprocess.run([*command, "--serve-load", str(RAW_SAMPLES), "--duration", "1", "--clients", "2",
                           "--out", str(tmp_path), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "serve_load.json").read_text())
    assert len(report["rows"]) == 2 and (tmp_path / "serve_load.md").read_text().startswith(report["machine"]["model"])

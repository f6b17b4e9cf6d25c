"""The benchmark harness on tiny models with few iterations. No test asserts a speed."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from cellsdk.benchmarks import BenchConfig, discover, format_table, judge, latency_summary, load_targets, run_benchmark
from cellsdk.benchmarks.reports import write_reports
from cellsdk.benchmarks.stats import Target
from cellsdk.benchmarks.worker import ENERGY_UNAVAILABLE
from cellsdk.cli import bench_command
from cellsdk.errors import ConfigError, ModelNotFoundError
from tests.conftest import SAMPLES


def test_statistics_from_known_timings():
    seconds = [0.001 * v for v in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]
    s = latency_summary(seconds, batch=4)
    assert s["p50_ms"] == pytest.approx(5.5) and s["p90_ms"] == pytest.approx(9.1)
    assert s["p95_ms"] == pytest.approx(9.55) and s["p99_ms"] == pytest.approx(9.91)
    assert s["mean_ms"] == pytest.approx(5.5) and s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(10)
    assert s["throughput_ips"] == pytest.approx(4 / 0.0055) and s["runs"] == 10
    with pytest.raises(ValueError):
        latency_summary([])


def test_targets_and_judging(tmp_path):
    targets = load_targets()
    assert set(targets) == {"m2", "cpu", "cuda"} and all(t["p95_e2e_ms"] == 50.0 for t in targets.values())
    row = {"device_class": "cpu", "batch": 1, "e2e": {"p95_ms": 49.9}}
    assert judge(row, targets) == ("PASS", 50.0)
    assert judge({**row, "e2e": {"p95_ms": 50.0}}, targets)[0] == "FAIL"
    assert judge({**row, "batch": 32}, targets) == ("-", None)
    assert judge({**row, "device_class": "tpu"}, {"cpu": Target(p95_e2e_ms=1.0, batch=1)}) == ("-", None)
    (tmp_path / "bad.toml").write_text("[targets.cpu]\nbatch = 1\n")
    with pytest.raises(ConfigError, match="needs a number p95_e2e_ms"):
        load_targets(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("[[[")
    with pytest.raises(ConfigError, match="unreadable targets file"):
        load_targets(tmp_path / "broken.toml")


@pytest.fixture(scope="session")  # session: built once even where xdist interleaves modules
def bench_folder(artefacts, tiny_run, tmp_path_factory):
    """ONNX + OpenVINO + CoreML artefacts with a manifest that names the source checkpoint."""
    folder = tmp_path_factory.mktemp("bench")
    source = artefacts["onnxruntime"].parent
    entries = []
    for name, backend in (("model.onnx", "onnxruntime"), ("model.xml", "openvino"), ("model.mlpackage", "coreml")):
        if not (source / name).exists():
            continue
        (shutil.copytree if (source / name).is_dir() else shutil.copy)(source / name, folder / name)
        if name.endswith(".xml"):
            shutil.copy(source / "model.bin", folder / "model.bin")
        entries.append({"file": name, "backend": backend, "precision": "fp32", "status": "passed",
                        "runtime_options": {"precision": "f32"} if backend == "openvino" else {}})
    (folder / "manifest.json").write_text(json.dumps({
        "artefacts": entries, "source_checkpoint": {"path": str(tiny_run.best_checkpoint)},
        "metadata": {"preprocessing": {"input_size": 32}}}))
    return folder


@pytest.fixture(scope="session")  # session: built once even where xdist interleaves modules
def report(bench_folder):
    config = BenchConfig(batches=(1, 3), warmup=1, iterations=3, data=str(SAMPLES), data_split="val",
                         data_cropped=True)
    return run_benchmark([bench_folder], config, progress=False)


def test_rows_cover_every_artefact_batch_and_the_eager_reference(report):
    ok = [r for r in report["rows"] if r.get("ok")]
    assert len(ok) == len(report["rows"]), [r.get("error") for r in report["rows"]]
    keys = {(r["backend"], r["batch"]) for r in ok}
    assert {("onnxruntime", 1), ("onnxruntime", 3), ("openvino", 1), ("pytorch-eager", 1), ("pytorch-eager", 3)} <= keys
    for row in ok:
        for kind in ("e2e", "model_only"):
            stats = row[kind]
            assert stats["runs"] == 3 and stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        for percentile in ("p50_ms", "p95_ms", "max_ms"):  # model time is measured inside the same calls
            assert row["model_only"][percentile] <= row["e2e"][percentile]
        assert row["conditions"] == "ok" or row["conditions"].startswith(("busy", "noisy"))
        assert row["verified"] in ("passed", "reference", "unknown")
        assert row["other_load_cores"] is None or row["other_load_cores"] >= 0
        assert row["cold_start_s"] > 0 and row["peak_memory_mb"] > 0
        assert 0 < row["cpu_seconds_per_image"] < 60  # whole process, every thread, per image
        assert (row["joules_per_image"] is None) == (row["energy"] == ENERGY_UNAVAILABLE)  # measured, or said so
        assert row["status"] in ("PASS", "FAIL", "-") and (row["batch"] == 1) == (row["status"] != "-")
        assert row["speedup_vs_eager"] > 0
        if row["backend"] != "pytorch-eager":
            assert row["vs_bare"] > 0 and row["size_mb"] > 0 and row["precision"] == "fp32"
    firsts = [r for r in ok if r["batch"] == 1]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 for r in firsts)
    assert all(r["input_size"] == 32 for r in ok)  # eager runs at the artefacts' size
    onnx, eager = (next(r for r in firsts if r["backend"] == b) for b in ("onnxruntime", "pytorch-eager"))
    assert onnx["accuracy"] == pytest.approx(eager["accuracy"])  # same images, same model
    assert {"cpu", "cores", "flags"} <= set(report["machine"])


def test_absent_devices_are_listed_as_skipped_with_reasons(report):
    reasons = {s["row"]: s["reason"] for s in report["skipped"]}
    import sys

    if sys.platform != "darwin":
        assert "CoreML" in reasons["model.mlpackage on coreml"]
    from cellsdk.platform.gpu import driver_problem

    if driver_problem():  # no usable NVIDIA GPU: every cuda / tensorrt row says why, torch-free
        assert reasons["model.onnx on cuda"] == reasons["model.onnx on tensorrt"] == driver_problem()
        assert "NVIDIA" in reasons["model.onnx on cuda"] or "CUDA" in reasons["model.onnx on cuda"]
    assert "skipped: " in format_table(report)


def test_reports_are_written_and_parseable(report, tmp_path):
    files = write_reports(report, tmp_path)
    assert json.loads(files["json"].read_text())["rows"][0]["e2e"]["p50_ms"] > 0
    with open(files["csv"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "model" and len(rows) == len(report["rows"]) + 1
    markdown = files["markdown"].read_text()
    assert markdown.startswith("# cellsdk-bench results") and markdown.count("\n| ") == len(report["rows"]) + 1
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gate_fails_an_impossible_target(bench_folder, tmp_path):
    (tmp_path / "impossible.toml").write_text("[targets.cpu]\np95_e2e_ms = 0.000001\nbatch = 1\n")
    runner = CliRunner()
    args = [str(bench_folder / "model.onnx"), "--batch", "1", "--iterations", "2", "--warmup", "0",
            "--device", "cpu", "--quiet", "--no-eager"]
    result = runner.invoke(bench_command, [*args, "--targets", str(tmp_path / "impossible.toml"),
                                           "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "FAIL" in result.output and "latency target missed" in result.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["failed"] == 1
    generous = tmp_path / "generous.toml"
    generous.write_text("[targets.cpu]\np95_e2e_ms = 1000000\nbatch = 1\n")
    assert runner.invoke(bench_command, [*args, "--targets", str(generous)]).exit_code == 0


def test_bad_input(tmp_path):
    with pytest.raises(ModelNotFoundError):
        discover([tmp_path / "none.onnx"])
    with pytest.raises(ConfigError, match="unknown device tpu"):
        BenchConfig(devices=("tpu",))
    result = CliRunner().invoke(bench_command, [str(tmp_path), "--batch", "one"])
    assert result.exit_code == 1 and "--batch 'one'" in result.output


def test_eager_reference_runs_at_each_conversion_folders_input_size(tiny_run):
    from cellsdk.benchmarks.harness import _plan

    artefacts = [{"path": f"{group}/model.fp32.onnx", "precision": "fp32", "backend": "onnxruntime", "options": {},
                  "verified": "passed", "checkpoint": str(tiny_run.best_checkpoint), "group": group, "input_size": size}
                 for group, size in (("g128", 128), ("g224", 224))]
    jobs, _ = _plan(artefacts, BenchConfig(devices=("cpu",), batches=(1,)))
    eager = {job["group"]: job["input_size"] for job in jobs if job["kind"] == "eager"}
    assert eager == {"g128": 128, "g224": 224}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss surviving exec is a Linux trait")
def test_energy_comes_from_the_package_counters_and_survives_a_wrap(tmp_path, monkeypatch):
    from cellsdk.benchmarks import worker

    for domain, energy in (("intel-rapl:0", 5_000_000), ("intel-rapl:0:0", 1), ("intel-rapl:1", 7_000_000)):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "energy_uj").write_text(str(energy))
        (tmp_path / domain / "max_energy_range_uj").write_text("10000000")
    monkeypatch.setattr(worker, "_POWERCAP", str(tmp_path))
    before = worker.energy_joules()
    assert set(before) == {str(tmp_path / "intel-rapl:0"), str(tmp_path / "intel-rapl:1")}  # packages only
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("6500000")   # +1.5 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("500000")    # wrapped: +3.5 J
    assert worker._joules_between(before, worker.energy_joules()) == pytest.approx(5.0)
    monkeypatch.setattr(worker, "_POWERCAP", str(tmp_path / "absent"))
    assert worker.energy_joules() is None


def test_worker_peak_memory_is_its_own_not_its_parents():
    import subprocess

    import numpy as np

    ballast = np.ones((300, 1024, 1024), dtype=np.uint8)  # 300 MB resident in this (parent) process
    code = "from cellsdk.benchmarks.worker import _peak_memory_mb; print(_peak_memory_mb())"
    peak = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1 < peak < 250 and ballast.sum() > 0


def test_measurement_conditions_flag_busy_and_noisy_rows():
    from cellsdk.benchmarks.stats import measurement_conditions

    quiet = {"ok": True, "e2e": {"p50_ms": 10.0, "p95_ms": 12.0}, "other_load_cores": 0.05}
    assert measurement_conditions(quiet) == "ok"
    assert measurement_conditions({**quiet, "other_load_cores": 1.2}).startswith("busy")
    assert "noisy" in measurement_conditions({**quiet, "e2e": {"p50_ms": 10.0, "p95_ms": 40.0}})
    assert measurement_conditions({"ok": False}) == "-"


def test_latency_chart_uses_a_log_axis_when_rows_differ_twentyfold():
    from cellsdk.benchmarks.reports import latency_scale

    def rows(*p50):
        return [{"e2e": {"p50_ms": value}} for value in p50]

    assert latency_scale(rows(2.0, 3.0, 30.0)) == "linear" and latency_scale(rows(2.0, 200.0)) == "log"

"""What ``cellsdk-bench`` records on a GPU: NVML facts and memory, TensorRT engine build vs cache reuse.

Off a GPU, NVML is faked at its C entry points and the benchmark worker at the harness's seam; the real worker's
``cold_only`` start runs on the CPU. Tests marked ``gpu`` run the real thing and skip elsewhere with the reason.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

import cellsdk.platform.nvml as nvml
from cellsdk.benchmarks import BenchConfig, format_table, harness, latency_summary, run_benchmark
from cellsdk.benchmarks.reports import _COLUMNS, _cells, outside_share, write_reports
from cellsdk.benchmarks.worker import gpu_index, run_spec

MiB = 2**20


class FakeNvml:
    """libnvidia-ml with GPUs 0..count-1; records the physical indices asked for and the shutdowns."""

    def __init__(self, count: int = 1, used_mb: float = 1000.0):
        self.count, self.used_mb = count, used_mb
        self.asked: list[int] = []
        self.inits = self.shutdowns = 0

    def nvmlInit_v2(self):
        self.inits += 1
        return 0

    def nvmlShutdown(self):
        self.shutdowns += 1
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        self.asked.append(index.value)
        if index.value >= self.count:
            return 2  # NVML_ERROR_INVALID_ARGUMENT
        handle.contents.value = 0x1000 + index.value
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, memory):
        memory.contents.total = 81559 * MiB
        memory.contents.used = int(self.used_mb * MiB)
        memory.contents.free = memory.contents.total - memory.contents.used
        return 0

    def nvmlDeviceGetName(self, handle, buffer, length):
        buffer.value = b"NVIDIA H100 80GB HBM3"
        return 0

    def nvmlSystemGetDriverVersion(self, buffer, length):
        buffer.value = b"580.159.04"
        return 0

    def nvmlSystemGetCudaDriverVersion_v2(self, version):
        version.contents.value = 13000
        return 0


@pytest.fixture()
def fake_nvml(monkeypatch):
    lib = FakeNvml(count=2)
    monkeypatch.setattr(nvml, "_library", lambda: lib if lib.nvmlInit_v2() == 0 else None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return lib


def test_nvml_facts_and_memory_through_its_c_entry_points(fake_nvml, monkeypatch):
    info = nvml.gpu_info(0)
    assert info == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559, "driver": "580.159.04",
                    "cuda_driver": "13.0"}
    assert nvml.gpu_memory_used_mb(1) == pytest.approx(1000.0)
    assert nvml.gpu_info(2) is None and nvml.gpu_memory_used_mb(2) is None  # no such GPU
    assert fake_nvml.shutdowns == fake_nvml.inits == 4  # every call shuts NVML down again
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    fake_nvml.asked.clear()
    assert nvml.gpu_info(0)["index"] == 0 and fake_nvml.asked == [1]  # CUDA's cuda:0 is NVML's GPU 1


def test_the_memory_structure_matches_nvmls_layout():
    assert ctypes.sizeof(nvml._Memory) == 24 and [f[0] for f in nvml._Memory._fields_] == ["total", "free", "used"]


def test_without_a_driver_nvml_answers_none():
    from cellsdk.platform.gpu import nvidia_driver

    if nvidia_driver().problem is None:
        pytest.skip("this machine has an NVIDIA driver")
    assert nvml.gpu_info() is None and nvml.gpu_memory_used_mb() is None


def test_gpu_index_of_device_names():
    assert [gpu_index(d) for d in ("cuda", "cuda:1", "tensorrt", "tensorrt:2", "cpu", "mps", "auto")] == \
        [0, 1, 0, 2, None, None, None]


def test_outside_share_is_the_e2e_time_not_in_the_runtime_call():
    row = {"ok": True, "e2e": {"p50_ms": 10.0}, "model_only": {"p50_ms": 4.0}}
    assert outside_share(row) == pytest.approx(60.0)
    assert outside_share({"ok": False}) is None and outside_share({"ok": True, "e2e": {"p50_ms": 1.0}}) is None


def test_the_real_worker_stops_after_the_cold_start_when_asked(artefacts, samples):
    images = [str(p) for p in sorted(samples.glob("test/*/*.jpg"))[:4]]
    spec = {"kind": "cellsdk", "model": str(artefacts["onnxruntime"]), "backend": "onnxruntime", "device": "cpu",
            "options": {}, "batch": 1, "images": images, "warmup": 0, "iterations": 2, "duration": None,
            "cold_only": True}
    out = run_spec(spec)
    assert out["cold_start_s"] > 0 and out["runtime"] and "e2e" not in out and "gpu_memory_mb" not in out


def _fake_rows(monkeypatch, tmp_path: Path, *, cached_ok: bool = True) -> list[dict]:
    """Plan a tensorrt row for a real .onnx file with the device said present; the worker faked; its specs kept."""
    from cellsdk.backends.onnxruntime import OnnxRuntimeBackend

    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the worker is faked")
    monkeypatch.setattr(harness, "_available_devices", lambda: {"cpu": None, "cuda": None, "tensorrt": None})
    monkeypatch.setattr(OnnxRuntimeBackend, "device_unavailable_reason", classmethod(lambda cls, device: None))
    specs: list[dict] = []

    def worker(spec):
        specs.append(spec)
        cache = Path(spec["options"]["tensorrt_cache"]) if spec["device"] == "tensorrt" else None
        if spec.get("cold_only"):
            assert cache is not None and (cache / "engine.plan").is_file()  # the cache the first start filled
            return {"ok": True, "cold_start_s": 1.25} if cached_ok else {"ok": False, "error": "RuntimeError: bad"}
        if cache is not None:
            assert cache.is_dir() and not any(cache.iterdir())  # every row builds its engine from nothing
            (cache / "engine.plan").write_bytes(b"x" * 3_000_000)
        timing = latency_summary([0.004, 0.005, 0.006], batch=spec["batch"])
        return {"ok": True, "cold_start_s": 42.0, "e2e": timing, "other_load_cores": 0.0, "gpu_memory_mb": 512.0,
                "model_only": latency_summary([0.001, 0.002, 0.003], batch=spec["batch"])}

    monkeypatch.setattr(harness, "_run_worker", worker)
    report = run_benchmark([model], BenchConfig(devices=("tensorrt", "cuda"), batches=(1,), warmup=0, iterations=3,
                                                eager=False, images=("unused.jpg",)), progress=False)
    report["_specs"] = specs
    return report


def test_a_tensorrt_row_times_the_engine_build_then_a_start_from_the_cache(monkeypatch, tmp_path):
    report = _fake_rows(monkeypatch, tmp_path)
    specs = report.pop("_specs")
    assert [(s["device"], bool(s.get("cold_only"))) for s in specs] == [("tensorrt", False), ("tensorrt", True),
                                                                        ("cuda", False)]
    assert specs[0]["options"]["tensorrt_cache"] == specs[1]["options"]["tensorrt_cache"]
    assert not Path(specs[0]["options"]["tensorrt_cache"]).exists()  # the row's own cache is removed afterwards
    assert "tensorrt_cache" not in specs[2]["options"]
    tensorrt, cuda = report["rows"]
    assert tensorrt["cold_start_s"] == 42.0 and tensorrt["cold_start_cached_s"] == 1.25
    assert tensorrt["engine_cache_mb"] == pytest.approx(3.0) and "cold_start_cached_s" not in cuda
    table = format_table(report)
    assert "model.onnx tensorrt b1: cold start 42.00 s building the TensorRT engine, 1.25 s reusing it from the " \
           "engine cache (3.0 MB)" in table
    cells = dict(zip(_COLUMNS, _cells(tensorrt), strict=True))
    assert cells["GPU MB"] == "512" and cells["outside %"] == "60"  # 1 - model p50 2 ms / e2e p50 5 ms
    nvidia = report["machine"]["nvidia"]  # a GPU report names its GPU (none here: NVML says so with None)
    assert "gpu" in nvidia and nvidia["onnxruntime"]["package"] in ("onnxruntime", "onnxruntime-gpu")
    markdown = write_reports(report, tmp_path / "out")["markdown"].read_text()
    assert "\nGPU: " in markdown and "GPU MB = memory in use on the GPU" in markdown


def test_a_failed_start_from_the_engine_cache_is_reported(monkeypatch, tmp_path):
    report = _fake_rows(monkeypatch, tmp_path, cached_ok=False)
    assert report["rows"][0]["cold_start_cached_error"] == "RuntimeError: bad"
    assert "loading from the TensorRT engine cache failed: RuntimeError: bad" in format_table(report)


def test_a_cpu_report_has_no_gpu_section(monkeypatch, tmp_path):
    assert harness._gpu_facts([{"device": "cpu"}]) is None


@pytest.mark.gpu
def test_gpu_bench_records_the_gpu_and_its_memory(artefacts, samples):
    import onnxruntime

    from cellsdk.platform.gpu import onnxruntime_cuda_problem

    problem = onnxruntime_cuda_problem(onnxruntime)
    if problem:
        pytest.skip(f"no usable CUDA for onnxruntime here: {problem}")
    images = tuple(str(p) for p in sorted(samples.glob("test/*/*.jpg"))[:8])
    report = run_benchmark([artefacts["onnxruntime"]], BenchConfig(devices=("cuda",), batches=(1,), warmup=2,
                                                                   iterations=5, eager=False, images=images),
                           progress=False)
    row = report["rows"][0]
    assert row["ok"] and row["gpu_memory_mb"] > 0, row
    assert report["machine"]["nvidia"]["gpu"]["name"]

"""The verification gate on an NVIDIA GPU: ``cellsdk verify MODEL --device cuda|tensorrt`` (converters/verify_deployed.py).

Without a GPU: the refusals (one line, before any image is read) for real, and the bookkeeping with the GPU
faked at its seams — the device checks, NVML's name for the GPU, and the gate's device (the artefact runs on
the CPU instead): the record written into the artefact and its manifest, replaced per (target, GPU model),
shown by ``cellsdk info``, and used by ``Classifier.load(folder, device="cuda")``. One test marked ``gpu``
runs the gate on a real GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cellsdk.platform.gpu as gpu
from cellsdk._io import sha256_file
from cellsdk.artefacts.info import describe, read_metadata
from cellsdk.artefacts.manifest import choose_artefact
from cellsdk.backends.onnxruntime import OnnxRuntimeBackend
from cellsdk.backends.torchscript import TorchScriptBackend
from cellsdk.cli import cli
from cellsdk.converters import verify_deployed
from cellsdk.converters.gate import verify_artefact as real_verify_artefact
from cellsdk.errors import ConfigError, DeviceUnavailableError, MetadataError
from cellsdk.metadata import SCHEMA_VERSION, ModelMetadata, Preprocessing
from tests.conftest import SAMPLES, TINY_GATE

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "cuda_driver": "13.0", "memory_total_mb": 81559}


@pytest.fixture()
def folder(converted, tmp_path) -> Path:
    """A private copy of the tiny model's conversion folder (the session's is shared)."""
    out = tmp_path / "converted"
    shutil.copytree(converted.out_dir, out)
    return out


@pytest.fixture()
def fake_gpu(monkeypatch):
    """A machine with one H100 as far as cellsdk can tell; the gate's artefact really runs on the CPU."""
    devices: list[str] = []

    def gate_on_cpu(*args, device="cpu", **kwargs):
        devices.append(device)
        return real_verify_artefact(*args, device="cpu", **kwargs)

    state = {"gpu": dict(H100)}
    monkeypatch.setattr(OnnxRuntimeBackend, "device_unavailable_reason", classmethod(lambda cls, device: None))
    monkeypatch.setattr(TorchScriptBackend, "device_unavailable_reason", classmethod(lambda cls, device: None))
    monkeypatch.setattr(gpu, "onnxruntime_cuda_problem", lambda *a, **k: None)
    monkeypatch.setattr(gpu, "gpu_identity", lambda device="cuda": dict(state["gpu"]))
    monkeypatch.setattr(verify_deployed, "gpu_identity", lambda device="cuda": dict(state["gpu"]))
    monkeypatch.setattr(verify_deployed, "verify_artefact", gate_on_cpu)
    state["devices"] = devices
    return state


def _verify(model: Path, reference: Path, device: str, **kwargs):
    return verify_deployed.verify_deployed(model, SAMPLES, reference=reference, data_cropped=True, device=device,
                                    verify=TINY_GATE, progress=False, **kwargs)


# ---------------------------------------------------------------- the metadata field (schema 4)

def test_gpu_records_travel_in_the_metadata_and_older_schemas_still_load():
    meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8),
                         gpu_verification=[{"target": "cuda", "gpu": "NVIDIA H100", "status": "passed"}])
    back = ModelMetadata.from_json(meta.to_json())
    assert back.gpu_verification == meta.gpu_verification and back.schema_version == SCHEMA_VERSION >= 4
    old = json.loads(meta.to_json())
    del old["gpu_verification"]
    old["schema_version"] = 3
    assert ModelMetadata.from_dict(old).gpu_verification == ()
    with pytest.raises(MetadataError, match="gpu_verification must list records with a 'target', a 'gpu'"):
        ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8),
                      gpu_verification=({"target": "cuda", "status": "passed"},))


# ---------------------------------------------------------------- refusals, for real on this machine

def test_a_missing_gpu_is_refused_in_one_line_before_any_image_is_read(folder, tiny_checkpoint, tmp_path):
    problem = gpu.driver_problem()
    if problem is None:
        pytest.skip("this machine has an NVIDIA driver and GPU")
    model = folder / "model.fp32.onnx"
    before = model.read_bytes()
    with pytest.raises(DeviceUnavailableError, match=r"^device 'cuda': "):
        verify_deployed.verify_deployed(model, tmp_path / "no-such-data", reference=tiny_checkpoint, device="cuda")
    result = CliRunner().invoke(cli, ["verify", str(model), "--reference", str(tiny_checkpoint), "--data",
                                      str(SAMPLES), "--data-cropped", "--device", "cuda", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "device 'cuda': " in result.output, result.output
    assert model.read_bytes() == before


def test_tensorrt_is_refused_for_torchscript_and_cpu_only_devices_are_named(folder, tiny_checkpoint):
    with pytest.raises(DeviceUnavailableError, match=r"^device 'tensorrt': torchscript does not run on tensorrt$"):
        _verify(folder / "model.fp32.torchscript", tiny_checkpoint, "tensorrt")
    for device in ("mps", "gpu"):
        with pytest.raises(ConfigError, match=f"device '{device}': cellsdk verify runs the gate on cpu .* or on an "
                                              r"NVIDIA GPU \(cuda, cuda:N, tensorrt\)"):
            _verify(folder / "model.fp32.onnx", tiny_checkpoint, device)


def test_emulated_cpu_classes_cannot_be_combined_with_a_gpu(folder, tiny_checkpoint, fake_gpu):
    from cellsdk.converters.targets import CpuTargets

    with pytest.raises(ConfigError, match="emulated CPU classes check CPU arithmetic; verify on the GPU and on CPU "
                                          "classes in two runs"):
        _verify(folder / "model.fp32.onnx", tiny_checkpoint, "cuda",
                targets=CpuTargets.parse("native,haswell"))
    assert fake_gpu["devices"] == []


# ---------------------------------------------------------------- bookkeeping, GPU faked

def test_the_record_goes_into_the_artefact_and_its_manifest_and_is_replaced_per_gpu(folder, tiny_checkpoint, fake_gpu):
    model = folder / "model.fp32.onnx"
    cpu_records = read_metadata(model).cpu_verification
    result = _verify(model, tiny_checkpoint, "cuda")
    assert fake_gpu["devices"] == ["cuda"]  # the gate was asked to run the artefact on the GPU
    assert result["status"] == "passed" and result["written"] and result["images"] == 32
    (record,) = result["records"]
    assert record["target"] == "cuda" and record["device"] == "cuda" and record["gpu"] == H100["gpu"]
    assert record["driver"] == "580.159.04" and record["images"] == 32 and record["top1_agreement"] >= 0.99
    assert record["verified_at"].endswith("Z") and "latency_ms" in record and record["runtime"]
    meta = read_metadata(model)
    assert list(meta.gpu_verification) == [record] and meta.cpu_verification == cpu_records
    entry = next(a for a in json.loads((folder / "manifest.json").read_text())["artefacts"]
                 if a["file"] == model.name)
    assert entry["gpu_verification"] == [record]
    assert entry["sha256"] == sha256_file(model)  # the manifest describes the rewritten file

    _verify(model, tiny_checkpoint, "cuda:0")  # the same GPU model again: replaced, not added
    assert len(read_metadata(model).gpu_verification) == 1
    fake_gpu["gpu"] = {**H100, "gpu": "NVIDIA H200"}
    _verify(model, tiny_checkpoint, "tensorrt")  # another GPU and target: added
    records = read_metadata(model).gpu_verification
    assert sorted((r["target"], r["gpu"]) for r in records) == [("cuda", H100["gpu"]), ("tensorrt", "NVIDIA H200")]
    from cellsdk import Classifier

    assert Classifier.load(model).metadata.gpu_verification == records  # the artefact still loads and runs


def test_fp16_on_tensorrt_asks_for_fp16_and_no_write_leaves_the_file(folder, tiny_checkpoint, fake_gpu):
    model = folder / "model.fp16.onnx"
    before = model.read_bytes()
    result = _verify(model, tiny_checkpoint, "tensorrt", write=False)
    assert result["records"][0]["runtime_options"] == {"tensorrt_fp16": True}
    assert not result["written"] and model.read_bytes() == before


def test_a_loaded_folder_prefers_what_was_verified_on_this_gpu_and_never_what_failed_there(folder, tiny_checkpoint,
                                                                                           fake_gpu):
    before, why, _ = choose_artefact(folder, "x86-64-avx2", "cuda")
    assert "cellsdk verified it on CPUs, not on this GPU" in why and f"cellsdk verify {before.name} --device cuda" in why
    other = folder / ("model.fp32.torchscript" if before.name != "model.fp32.torchscript" else "model.fp32.onnx")
    _verify(other, tiny_checkpoint, "cuda")
    path, why, _ = choose_artefact(folder, "x86-64-avx2", "cuda")
    assert path == other and f"verified on this GPU ({H100['gpu']}, cuda)" in why
    assert choose_artefact(folder, "x86-64-avx2", "tensorrt")[0].suffix == ".onnx"  # a cuda record is not tensorrt's
    fake_gpu["gpu"] = {**H100, "gpu": "NVIDIA A100"}
    assert choose_artefact(folder, "x86-64-avx2", "cuda")[0] == before  # verified on another GPU model: not here

    fake_gpu["gpu"] = dict(H100)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["artefacts"]:
        if entry["file"] == other.name:
            entry["gpu_verification"][0]["status"] = "failed"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    path, _, _ = choose_artefact(folder, "x86-64-avx2", "cuda")
    assert path != other  # failed on this GPU: never chosen there
    assert choose_artefact(folder, "x86-64-avx2", "cpu")[0].suffix != ""  # the CPU's choice ignores GPU records


def test_cellsdk_verify_and_info_show_the_gpu_record(folder, tiny_checkpoint, fake_gpu):
    model = folder / "model.fp32.onnx"
    assert "verified on NVIDIA GPUs: none recorded (cellsdk verify --device cuda on one records it)" in describe(model)
    result = CliRunner().invoke(cli, ["verify", str(model), "--reference", str(tiny_checkpoint), "--data",
                                      str(SAMPLES), "--data-cropped", "--device", "cuda", "--quiet",
                                      "--max-accuracy-drop", "20", "--max-recall-drop", "75"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{model}: 32 held-out images"
    assert lines[1].split()[:3] == ["target", "GPU", "driver"]
    assert lines[2].split()[:4] == ["cuda", "NVIDIA", "H100", "80GB"] and " passed " in lines[2]
    assert lines[-1] == f"recorded in {model} (1 GPU records in all)"
    text = describe(model)
    assert "verified on NVIDIA GPUs:\n" in text and "NVIDIA H100 80GB HBM3" in text
    assert f"cuda ({H100['gpu']}) passed" in describe(folder)


# ---------------------------------------------------------------- on a real GPU

@pytest.mark.gpu
def test_gpu_the_gate_runs_on_the_gpu_and_records_it(folder, tiny_checkpoint):
    import onnxruntime as ort

    problem = gpu.onnxruntime_cuda_problem(ort)
    if problem:
        pytest.skip(f"no usable CUDA for onnxruntime here: {problem}")
    model = folder / "model.fp32.onnx"
    result = _verify(model, tiny_checkpoint, "cuda")
    (record,) = result["records"]
    assert record["runtime"] == "onnxruntime on CUDAExecutionProvider"
    assert record["gpu"] == (gpu.gpu_identity("cuda") or {}).get("gpu")
    assert result["status"] == "passed", record["reasons"]
    path, why, _ = choose_artefact(folder, "x86-64-avx2", "cuda")
    assert path == model or "verified on this GPU" in why

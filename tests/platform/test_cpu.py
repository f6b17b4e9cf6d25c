"""cellsdk.platform.cpu and what the runtime does with it: CPU classes, the int8 warning / strict refusal, folder choice, info.

Nothing here depends on the class of the CPU the suite runs on: the host class is faked where it matters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import cellsdk.artefacts.cpu_records
import cellsdk.platform.cpu
from cellsdk import Classifier, CpuVerificationWarning, UnverifiedCpuError
from cellsdk.artefacts.cpu_records import check_artefact
from cellsdk.artefacts.manifest import choose_artefact
from cellsdk.cli import cli
from cellsdk.platform.cpu import CPU_CLASSES, HostCpu, classify, host_cpu

AVX2 = HostCpu("Test CPU (AVX2)", ("sse4_1", "sse4_2", "avx", "fma", "avx2"), "x86-64-avx2", "test")
VNNI = HostCpu("Test CPU (VNNI)", ("avx2", "avx512f", "avx512bw", "avx512_vnni"), "x86-64-avx512-vnni", "test")
QEMU = shutil.which("qemu-x86_64")


@pytest.mark.parametrize(("features", "machine", "expected"), [
    ({"sse4_1", "sse4_2"}, "x86_64", "x86-64-sse4"),
    ({"sse4_1", "avx", "avx2", "fma"}, "x86_64", "x86-64-avx2"),
    ({"avx2", "avx_vnni"}, "x86_64", "x86-64-avx-vnni"),
    ({"avx2", "avx512f", "avx512bw"}, "x86_64", "x86-64-avx512"),
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}, "x86_64", "x86-64-avx512-vnni"),
    ({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, "x86_64", "x86-64-amx"),
    (set(), "x86_64", "x86-64-baseline"),
    ({"asimddp"}, "aarch64", "arm64-dotprod"),
    (set(), "aarch64", "arm64-neon"),
    ({"asimddp", "i8mm", "bf16"}, "arm64", "arm64-i8mm"),
    (set(), "riscv64", "other"),
])
def test_classify(features, machine, expected):
    assert classify(features, machine) == expected
    assert expected in CPU_CLASSES


def test_saturating_classes_are_the_ones_without_vnni():
    assert {c.name for c in CPU_CLASSES.values() if c.int8_saturates} == {"x86-64-avx2", "x86-64-avx512"}


def test_host_cpu_is_read_and_consistent():
    cpu = host_cpu()
    assert cpu.cpu_class == classify(cpu.features, __import__("platform").machine())
    assert cpu.model and cpu.to_dict()["cpu_class"] == cpu.cpu_class
    if __import__("platform").machine() == "x86_64":
        assert cpu.source == "cpuid" and "sse4_2" in cpu.features


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (apt-get install qemu-user)")
@pytest.mark.parametrize(("model", "expected"), [("Haswell", "x86-64-avx2"), ("Nehalem", "x86-64-sse4")])
def test_cpuid_sees_the_emulated_cpu(model, expected):
    code = "from cellsdk.platform.cpu import host_cpu; c = host_cpu(); print(c.cpu_class, c.source)"
    out = subprocess.run([QEMU, "-cpu", model, sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out == [expected, "cpuid"]


# --------------------------------------------------------------------------- artefacts with a CPU record

def _int8_copy(src: Path, dst: Path, records: list[dict], recipe: dict | None = None) -> Path:
    """The tiny fp32 ONNX model relabelled as an int8 artefact with the given CPU-class records."""
    from cellsdk.converters.onnx import write_onnx_metadata

    meta = Classifier.load(src).metadata
    meta = meta.replace(precision="int8", quantization=recipe or {"recipe": "portable", "saturation_safe": True},
                        cpu_verification=tuple(records))
    write_onnx_metadata(src, dst, meta)
    return dst


def _record(cls: str, status: str = "passed", target: str = "native") -> dict:
    return {"target": target, "cpu_class": cls, "status": status, "features": [], "images": 32,
            "reasons": [] if status == "passed" else ["recall of basophil fell 25.00 points (limit 2.00)"]}


@pytest.fixture()
def fake_host(monkeypatch):
    """Set the host CPU the runtime sees; the once-only warning memory is reset."""
    monkeypatch.setattr(cellsdk.artefacts.cpu_records, "_WARNED", set())

    def use(cpu: HostCpu) -> None:
        monkeypatch.setattr(cellsdk.platform.cpu, "host_cpu", lambda: cpu)

    return use


def test_verified_class_loads_silently(artefacts, tmp_path, fake_host):
    model = _int8_copy(artefacts["onnxruntime"], tmp_path / "m.int8.onnx", [_record("x86-64-avx2")])
    fake_host(AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpuVerificationWarning)
        clf = Classifier.load(model, strict=True)
    assert clf.cpu_check.status == "verified" and clf.cpu_check.ok


def test_unverified_class_warns_once_and_strict_refuses(artefacts, tmp_path, fake_host):
    model = _int8_copy(artefacts["onnxruntime"], tmp_path / "m.int8.onnx", [_record("x86-64-sse4")])
    fake_host(AVX2)
    with pytest.warns(CpuVerificationWarning, match=r"never verified on this CPU class x86-64-avx2") as caught:
        clf = Classifier.load(model)
    message = str(caught[0].message)
    assert "verified on: x86-64-sse4" in message and "saturating int16" in message and "cellsdk verify" in message
    assert clf.cpu_check.status == "unverified"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpuVerificationWarning)
        Classifier.load(model)  # once per artefact and class
    with pytest.raises(UnverifiedCpuError, match="refused: strict mode"):
        Classifier.load(model, strict=True)


def test_failed_class_says_so(artefacts, tmp_path, fake_host):
    model = _int8_copy(artefacts["onnxruntime"], tmp_path / "m.int8.onnx",
                       [_record("x86-64-avx512-vnni"), _record("x86-64-avx2", "failed", "haswell")],
                       {"recipe": "vnni", "saturation_safe": False, "unsafe_cpu_classes": ["x86-64-avx2"]})
    fake_host(AVX2)
    with pytest.raises(UnverifiedCpuError, match=r"FAILED on this CPU class x86-64-avx2.*basophil"):
        Classifier.load(model, strict=True)
    fake_host(VNNI)
    assert Classifier.load(model, strict=True).cpu_check.status == "verified"


def test_float_artefacts_are_not_checked(artefacts, fake_host):
    fake_host(AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpuVerificationWarning)
        assert Classifier.load(artefacts["onnxruntime"], strict=True).cpu_check.status == "not applicable"


def test_weight_only_int8_is_not_checked(artefacts):
    meta = Classifier.load(artefacts["onnxruntime"]).metadata.replace(
        precision="int8", quantization={"method": "coremltools linear weight quantization", "weights_only": True})
    assert check_artefact(meta, host=AVX2).status == "not applicable"


def test_unrecorded_recipe_risk_depends_on_the_class(artefacts, tmp_path):
    meta = Classifier.load(artefacts["onnxruntime"]).metadata.replace(precision="int8", quantization={"recipe": "vnni",
                                                                        "unsafe_cpu_classes": ["x86-64-avx2"]})
    assert "saturate on this class" in check_artefact(meta, host=AVX2).message
    assert "nothing measured its accuracy here" in check_artefact(meta, host=VNNI).message


def _folder(artefacts, tmp_path: Path, int8_records: list[dict]) -> Path:
    folder = tmp_path / "converted"
    folder.mkdir()
    shutil.copy(artefacts["onnxruntime"], folder / "model.fp32.onnx")
    _int8_copy(artefacts["onnxruntime"], folder / "model.int8.onnx", int8_records)
    manifest = {"cellsdk_manifest": 1, "artefacts": [
        {"file": "model.fp32.onnx", "backend": "onnxruntime", "precision": "fp32", "status": "passed",
         "latency_ms": 3.0},
        {"file": "model.int8.onnx", "backend": "onnxruntime", "precision": "int8", "status": "passed",
         "latency_ms": 1.0, "cpu_verification": int8_records}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(("records", "expected", "note"), [
    ([_record("x86-64-avx2")], "model.int8.onnx", ""),
    ([_record("x86-64-sse4")], "model.fp32.onnx", ""),  # faster int8 not verified here: the verified fp32 wins
    ([_record("x86-64-avx2", "failed")], "model.fp32.onnx", ""),
])
def test_folder_prefers_artefacts_verified_for_this_class(artefacts, tmp_path, fake_host, records, expected, note):
    folder = _folder(artefacts, tmp_path, records)
    path, why, _ = choose_artefact(folder, "x86-64-avx2")
    assert path.name == expected, why
    fake_host(AVX2)
    assert Classifier.load(folder).path.name == expected


def test_folder_falls_back_to_unverified_int8_with_a_note(artefacts, tmp_path):
    folder = _folder(artefacts, tmp_path, [_record("x86-64-sse4")])
    (folder / "model.fp32.onnx").unlink()
    path, why, _ = choose_artefact(folder, "x86-64-avx2")
    assert path.name == "model.int8.onnx" and "not verified on this CPU class x86-64-avx2" in why


# --------------------------------------------------------------------------- cellsdk info on every artefact type

def test_info_on_every_artefact_type(artefacts, tiny_run):
    runner = CliRunner()
    for backend, path in artefacts.items():
        result = runner.invoke(cli, ["info", str(path)])
        assert result.exit_code == 0, (backend, result.output)
        assert "8 classes" in result.output and "verified on CPU classes" in result.output, result.output
        assert "this machine:" in result.output and host_cpu().cpu_class in result.output
        as_json = runner.invoke(cli, ["info", str(path), "--json"])
        assert as_json.exit_code == 0 and json.loads(as_json.output)["labels"][0] == "basophil"
    folder = runner.invoke(cli, ["info", str(artefacts["onnxruntime"].parent)])
    assert folder.exit_code == 0 and "conversion folder" in folder.output and "runs model." in folder.output
    checkpoint = runner.invoke(cli, ["info", str(tiny_run.best_checkpoint)])
    assert checkpoint.exit_code == 0 and "fp32, 8 classes" in checkpoint.output


def test_info_prints_the_cpu_record(artefacts, tmp_path, fake_host):
    model = _int8_copy(artefacts["onnxruntime"], tmp_path / "m.int8.onnx",
                       [_record("x86-64-avx2"), _record("x86-64-sse4", target="nehalem")])
    fake_host(AVX2)
    out = CliRunner().invoke(cli, ["info", str(model)]).output
    assert "portable recipe" in out and "nehalem" in out and "x86-64-sse4" in out
    assert "verified on this class" in out


@pytest.mark.parametrize("bad", ["no_such_model.onnx", "model.txt"])
def test_info_on_bad_paths_is_one_line(tmp_path, bad):
    target = tmp_path / bad
    if bad.endswith(".txt"):
        target.write_text("not a model")
    result = CliRunner().invoke(cli, ["info", str(target)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and len(result.output.splitlines()) == 1


def test_cli_predict_warns_in_one_line_and_strict_exits_1(artefacts, tmp_path, fake_host):
    model = _int8_copy(artefacts["onnxruntime"], tmp_path / "m.int8.onnx", [_record("x86-64-sse4")])
    image = next((Path(__file__).resolve().parents[2] / "samples" / "pbc_raw" / "ig").glob("*.jpg"))
    fake_host(AVX2)
    runner = CliRunner()
    result = runner.invoke(cli, ["predict", str(image), "--model", str(model)])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "never verified on this CPU class x86-64-avx2" in warning[0]
    strict = runner.invoke(cli, ["predict", str(image), "--model", str(model), "--strict"])
    assert strict.exit_code == 1 and "refused: strict mode" in strict.output and "Traceback" not in strict.output

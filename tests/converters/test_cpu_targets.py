"""Portable int8 and verification on CPU classes (converters/int8.py, targets.py, verify_deployed.py).

The recipe tests convert the shipped fp32 checkpoint (the real model: saturation needs real weights and
activations) to int8 ONNX and verify it on emulated classes only, never on ``native``, so the outcome is
the same on every host. They need qemu-x86_64 (setup installs it where it can) and are skipped without it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cellsdk import Classifier
from cellsdk.artefacts.manifest import STATUS_NOT_VERIFIED
from cellsdk.cli import cli
from cellsdk.converters import ConvertConfig, VerifyConfig, convert
from cellsdk.converters.int8 import INT8_RECIPES, capture_root_logging, recipe_record
from cellsdk.converters.targets import CpuTargets, balanced_sample, unverified_notes, verify_on_targets
from cellsdk.errors import ConfigError
from cellsdk.metadata import SCHEMA_VERSION
from tests.conftest import REPO, SAMPLES

CHECKPOINT = REPO / "models" / "bloodmnist_effnet_lite0_128.safetensors"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                                reason="qemu-x86_64 not installed (apt-get install qemu-user)")
# the shipped checkpoint on the 32 sample validation crops; gate as cellsdk-convert's default
EMULATED_ONLY = CpuTargets.parse("haswell,nehalem")


def _convert(tmp_path_factory, recipe: str):
    out = tmp_path_factory.mktemp(f"int8_{recipe}") / "converted"
    config = ConvertConfig(formats=("onnx",), precisions=("int8",), calib=str(SAMPLES), calib_samples=64,
                           data_cropped=True, int8_recipe=recipe, cpu_targets=EMULATED_ONLY,
                           verify=VerifyConfig(latency_runs=0))
    return convert(CHECKPOINT, out, config, progress=False)


@pytest.fixture(scope="session")  # session: built once even where xdist interleaves modules
def saturating(tmp_path_factory):
    return _convert(tmp_path_factory, "vnni")


@pytest.fixture(scope="session")  # session: built once even where xdist interleaves modules
def portable(tmp_path_factory):
    return _convert(tmp_path_factory, "portable")


def _int8(result):
    return next(a for a in result.manifest["artefacts"] if a["file"] == "model.int8.onnx")


def _by_target(entry):
    return {r["target"]: r for r in entry["cpu_verification"]}


@pytest.mark.slow
@needs_qemu
def test_saturating_recipe_fails_the_gate_under_emulated_haswell(saturating):
    entry = _int8(saturating)
    records = _by_target(entry)
    assert records["haswell"]["cpu_class"] == "x86-64-avx2" and records["haswell"]["status"] == "failed"
    assert any("recall of" in reason for reason in records["haswell"]["reasons"])
    assert records["nehalem"]["cpu_class"] == "x86-64-sse4" and records["nehalem"]["status"] == "passed"
    assert entry["status"] == "failed" and any("x86-64-avx2" in r for r in entry["reasons"])
    assert entry["quantization"]["unsafe_cpu_classes"] == ["x86-64-avx2", "x86-64-avx512"]


@pytest.mark.slow
@needs_qemu
def test_portable_recipe_passes_on_every_emulated_class(portable):
    entry = _int8(portable)
    records = _by_target(entry)
    assert {t: r["status"] for t, r in records.items()} == {"haswell": "passed", "nehalem": "passed"}
    assert entry["quantization"]["reduce_range"] is True and entry["quantization"]["saturation_safe"] is True
    for record in records.values():  # agrees with this machine's own run of the same artefact
        assert record["native_agreement"] >= 0.96 and record["images"] == 32


@pytest.mark.slow
@needs_qemu
def test_records_are_in_the_manifest_and_in_the_artefact(portable):
    entry = _int8(portable)
    for record in entry["cpu_verification"]:
        assert {"target", "cpu_class", "cpu", "features", "method", "images", "sample", "status",
                "accuracy_change", "worst_class"} <= set(record)
        assert record["method"].startswith("qemu-x86_64 -cpu ")
    assert "avx2" in _by_target(entry)["haswell"]["features"]
    assert "avx2" not in _by_target(entry)["nehalem"]["features"]
    meta = Classifier.load(portable.out_dir / "model.int8.onnx").metadata
    assert meta.schema_version == SCHEMA_VERSION and list(meta.cpu_verification) == entry["cpu_verification"]
    manifest = json.loads((portable.out_dir / "manifest.json").read_text())
    assert manifest["cpu_targets"]["requested"] == ["haswell", "nehalem"]
    assert manifest["cpu_targets"]["host"]["cpu_class"]
    fp32 = next(a for a in manifest["artefacts"] if a["file"] == "model.fp32.onnx")
    assert "cpu_verification" not in fp32  # float artefacts are not emulated by default


@pytest.mark.slow
@needs_qemu
def test_cellsdk_verify_records_this_machine(portable, tmp_path):
    model = tmp_path / "model.int8.onnx"
    shutil.copy(portable.out_dir / "model.int8.onnx", model)
    result = CliRunner().invoke(cli, ["verify", str(model), "--reference", str(CHECKPOINT), "--data", str(SAMPLES),
                                      "--data-cropped", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = Classifier.load(model).metadata
    targets = [r["target"] for r in meta.cpu_verification]
    assert sorted(targets) == ["haswell", "native", "nehalem"]  # added to, not replacing, the earlier records
    native = next(r for r in meta.cpu_verification if r["target"] == "native")
    assert native["status"] == "passed" and native["images"] == 32
    wrong = CliRunner().invoke(cli, ["verify", str(model), "--reference", str(model), "--data", str(SAMPLES)])
    assert wrong.exit_code == 1 and "must be a float model" in wrong.output


def test_missing_qemu_means_not_verified_never_passed(monkeypatch, artefacts):
    import cellsdk.converters.emulation as emulation

    monkeypatch.setattr(emulation, "qemu_binary", lambda: None)
    entry = {"file": "model.int8.onnx", "precision": "int8", "status": "passed", "reasons": [],
             "verification": {"images": 4, "accuracy": 1.0}}
    images = type("Images", (), {"targets": np.array([0, 1, 0, 1]), "arrays": np.zeros((4, 3, 8, 8), np.float32)})
    records = verify_on_targets([(entry, artefacts["onnxruntime"], None)], images, np.zeros((4, 8)),
                                VerifyConfig(), CpuTargets.parse("native,haswell,nehalem"), progress=False)
    by = {r["target"]: r for r in records["model.int8.onnx"]}
    assert by["native"]["status"] == "passed"
    for name in ("haswell", "nehalem"):
        assert by[name]["status"] == STATUS_NOT_VERIFIED
        assert "apt-get install qemu-user" in by[name]["reasons"][0]
    notes = unverified_notes([{"cpu_verification": records["model.int8.onnx"]}])
    assert notes == ["warning: CPU classes not verified: qemu-x86_64 is not installed: install QEMU user-mode "
                     "emulation: apt-get install qemu-user (Debian / Ubuntu) or dnf install qemu-user"]


@pytest.mark.parametrize(("spec", "names"), [("native,haswell,nehalem", ("native", "haswell", "nehalem")),
                                             ("NATIVE, haswell,haswell", ("native", "haswell")), ("none", ())])
def test_target_parsing(spec, names):
    assert CpuTargets.parse(spec).names == names


@pytest.mark.parametrize(("spec", "options", "message"), [
    ("native,pentium4", {}, "unknown CPU class 'pentium4'"),
    ("native", {"images_per_class": 0}, "must be >= 1"),
])
def test_bad_targets_are_config_errors(spec, options, message):
    with pytest.raises(ConfigError, match=message):
        CpuTargets.parse(spec, **options)


def test_bad_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown int8 recipe 'fast'"):
        ConvertConfig(int8_recipe="fast")
    result = CliRunner().invoke(cli, ["convert", str(CHECKPOINT), "--out", "x", "--int8-recipe", "fast"])
    assert result.exit_code == 2 and "'fast' is not one of 'portable', 'vnni'" in result.output


def test_recipe_records():
    assert INT8_RECIPES == ("portable", "vnni")
    assert recipe_record("portable")["unsafe_cpu_classes"] == []
    assert set(recipe_record("vnni")["unsafe_cpu_classes"]) == {"x86-64-avx2", "x86-64-avx512"}


def test_balanced_sample_caps_every_class():
    targets = np.array([0] * 100 + [1] * 5 + [2] * 60)
    chosen = balanced_sample(targets, 50)
    assert np.bincount(targets[chosen]).tolist() == [50, 5, 50] and list(chosen) == sorted(chosen)


def test_quantizer_messages_are_captured_not_printed(capsys):
    import logging

    from cellsdk.converters.int8 import summarise_quantizer_messages

    with capture_root_logging() as records:
        logging.info("Increased scale[3] for weight `w` by ratio 2.0 to ensure bias input `b` has a valid scale.")
        logging.warning("Quantized bias `b` exceeds the range of a int32. The bias scale is too small.")
    assert capsys.readouterr().err == ""
    assert summarise_quantizer_messages(records) == {"weight scales widened so biases fit int32": 1,
                                                     "biases clipped to int32": 1}


def _arm64_or_skip(target: str = "cortex-a72") -> None:
    from cellsdk.converters.emulation import cannot_emulate

    problem = cannot_emulate(target)
    if problem:
        pytest.skip(problem)


@pytest.mark.slow
@needs_qemu
def test_the_saturating_recipe_fails_its_self_check_under_emulated_haswell(saturating, portable):
    """The artefact checks itself where it lands: full 8-bit weights saturate on AVX2, and its own test vectors
    (decoded and run under the emulated CPU) catch it; the portable recipe passes there."""
    from cellsdk.converters.emulation import self_check_emulated

    broken = self_check_emulated(saturating.out_dir / "model.int8.onnx", "haswell")
    assert broken["machine"]["cpu_class"] == "x86-64-avx2" and broken["status"] == "failed", broken
    assert any("cosine" in r or "agreement" in r for r in broken["reasons"])
    right = self_check_emulated(portable.out_dir / "model.int8.onnx", "haswell")
    assert right["status"] == "passed", right
    assert right["figures"]["logit_cosine"] > broken["figures"]["logit_cosine"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cortex-a72", "neoverse-n1"])
def test_the_portable_model_passes_its_self_check_on_arm64(portable, target):
    from cellsdk.converters.emulation import EMULATED, self_check_emulated

    _arm64_or_skip(target)
    verdict = self_check_emulated(portable.out_dir / "model.int8.onnx", target)
    assert verdict["status"] == "passed", verdict
    assert verdict["machine"]["cpu_class"] == EMULATED[target][1]  # the class the emulated process saw


@pytest.mark.slow
def test_cellsdk_verify_records_arm64_classes_from_qemu_aarch64(portable, tmp_path):
    _arm64_or_skip()
    model = tmp_path / "model.int8.onnx"
    shutil.copy(portable.out_dir / "model.int8.onnx", model)
    result = CliRunner().invoke(cli, ["verify", str(model), "--reference", str(CHECKPOINT), "--data", str(SAMPLES),
                                      "--data-cropped", "--verify-cpus", "cortex-a72,neoverse-n1", "--quiet",
                                      "--vectors", "keep"])
    assert result.exit_code == 0, result.output
    records = {r["target"]: r for r in Classifier.load(model).metadata.cpu_verification}
    a72, n1 = records["cortex-a72"], records["neoverse-n1"]
    assert (a72["cpu_class"], n1["cpu_class"]) == ("arm64-neon", "arm64-dotprod")
    assert "asimddp" in n1["features"] and "asimddp" not in a72["features"]  # what each emulated process saw
    assert a72["method"] == "qemu-aarch64 -cpu cortex-a72" and a72["status"] == n1["status"] == "passed"
    assert a72["native_agreement"] >= 0.96 and n1["native_agreement"] >= 0.96


def test_arm64_targets_without_their_environment_are_not_verified(monkeypatch, tmp_path):
    from cellsdk.converters import emulation

    monkeypatch.setenv("CELLSDK_ARM64_ENV", str(tmp_path / "nothing-here"))
    problem = emulation.cannot_emulate("neoverse-n1")
    assert problem and ("aarch64" in problem or "qemu-aarch64" in problem or "Linux" in problem)
    verdict = emulation.self_check_emulated(tmp_path / "model.int8.onnx", "neoverse-n1")
    assert verdict["status"] == STATUS_NOT_VERIFIED and verdict["reasons"] == [problem]


def test_an_arm64_environment_without_the_artefacts_runtime_leaves_it_not_verified(monkeypatch, tmp_path):
    """The aarch64 environment carries ONNX Runtime and LiteRT; an ExecuTorch program (its runtime needs torch)
    is reported not verified there, with the reason, never failed."""
    from pathlib import Path

    from cellsdk.converters import emulation

    root = tmp_path / "arm64"
    (root / "sysroot" / "usr" / "bin").mkdir(parents=True)
    (root / "sysroot" / "usr" / "bin" / "python3.11").write_text("")
    (root / "site" / "onnxruntime").mkdir(parents=True)
    monkeypatch.setenv("CELLSDK_ARM64_ENV", str(root))
    monkeypatch.setattr(emulation, "cannot_emulate", lambda target: None)
    assert emulation.cannot_run_there("cortex-a72", Path("model.int8.onnx")) is None
    assert "no executorch" in (emulation.cannot_run_there("cortex-a72", Path("model.int8.pte")) or "")
    assert "no ai_edge_litert" in (emulation.cannot_run_there("neoverse-n1", Path("model.int8.tflite")) or "")
    (root / "site" / "ai_edge_litert").mkdir()
    assert emulation.cannot_run_there("neoverse-n1", Path("model.int8.tflite")) is None
    assert emulation.cannot_run_there("haswell", Path("model.int8.pte")) is None  # x86 classes run this venv
    verdict = emulation.self_check_emulated(tmp_path / "model.int8.pte", "cortex-a72")
    assert verdict["status"] == STATUS_NOT_VERIFIED and "executorch" in verdict["reasons"][0]


def test_an_emulated_sample_fails_only_what_the_cpu_class_adds_to_this_machines_answers(monkeypatch, artefacts):
    """One flipped cell of 2 in a class is a 50-point recall drop on the sample: the native gate judged it on the
    whole split, so the emulated check records it and passes while the emulated answers equal this machine's, and
    fails once the emulated class flips another cell."""
    import cellsdk.converters.targets as targets_module

    labels = ("a", "b")
    expected = type("Expected", (), {"labels": labels, "output": "logits"})()
    targets = np.array([0, 0, 1, 1])
    reference = np.array([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    host = np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])  # the int8 artefact flips one "a" here too
    emulated = {"same": host, "worse": np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0]])}
    images = type("Images", (), {"targets": targets, "arrays": np.zeros((4, 3, 8, 8), np.float32)})
    entry = {"file": "model.int8.onnx", "precision": "int8", "status": "passed", "reasons": []}
    monkeypatch.setattr(targets_module, "cannot_run_there", lambda target, path: None)
    for case, logits in emulated.items():
        def fake_run(model, options, target, arrays, out, timeout, logits=logits):
            np.savez(out, logits=logits, info=json.dumps({"cpu_class": "x86-64-avx2", "features": [],
                                                          "runtime": "onnxruntime"}))

        monkeypatch.setattr(targets_module, "run_emulated", fake_run)
        records = verify_on_targets([(entry, artefacts["onnxruntime"], expected)], images, reference,
                                    VerifyConfig(min_quantized_agreement=0.0, min_logit_cosine=0.0),
                                    CpuTargets.parse("haswell"), progress=False,
                                    native_outputs={"model.int8.onnx": host})
        record = records["model.int8.onnx"][0]
        if case == "same":
            assert record["status"] == "passed" and record["native_agreement"] == 1.0
            assert any("recall of a fell 50.00 points" in r for r in record["same_on_this_machine"])
        else:
            assert record["status"] == "failed" and any("recall of b fell" in r for r in record["reasons"])

"""The conversion toolchain, parametrised over the converter registry, on a tiny model and the sample images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellsdk import Classifier
from cellsdk.backends import backend_for_path
from cellsdk.converters import (
    ConvertConfig,
    ExportJob,
    VerifyConfig,
    convert,
    converter_names,
    format_manifest_table,
    get_converter,
)
from cellsdk.converters.calibration import ImageSet, calibration_set, evaluation_set
from cellsdk.converters.gate import reference_logits, verify_artefact
from cellsdk.errors import BackendNotInstalledError, CheckpointError, ConfigError
from tests.conftest import SAMPLES, TINY_GATE

PLAN = [(fmt, precision) for fmt in converter_names() for precision in get_converter(fmt).precisions]


def _entry(manifest, fmt, precision):
    return next(a for a in manifest["artefacts"] if a["format"] == fmt and a["precision"] == precision)


@pytest.mark.parametrize(("fmt", "precision"), PLAN)
def test_every_format_and_precision_converts_and_verifies(converted, fmt, precision):
    entry = _entry(converted.manifest, fmt, precision)
    if entry["status"] == "skipped" and "not installed" in entry["reasons"][0]:
        pytest.skip(entry["reasons"][0])  # listed with the install command, not written
    path = converted.out_dir / entry["file"]
    assert path.exists() and entry["size_bytes"] > 0 and len(entry["sha256"]) == 64
    backend = backend_for_path(path)
    if backend.unavailable_reason():
        assert entry["status"] == "not verified on this platform", entry
        return
    assert entry["status"] == "passed", entry["reasons"]
    verification = entry["verification"]
    assert verification["images"] == 32 and 0 <= verification["top1_agreement"] <= 1
    if precision in ("fp32", "fp16"):
        assert verification["top1_agreement"] >= 0.99
    classifier = Classifier.load(path, **entry.get("runtime_options", {}))
    meta = classifier.metadata
    assert meta.precision == precision and list(meta.labels) == converted.manifest["metadata"]["labels"]
    assert meta.source_checkpoint_sha256 == converted.manifest["source_checkpoint"]["sha256"]
    assert set(meta.reference_metrics) == {"accuracy", "macro_f1", "min_recall", "ece"}
    if precision == "int8":
        assert meta.quantization and meta.calibration_sha256 == converted.manifest["calibration"]["sha256"]
    else:
        assert meta.quantization is None and meta.calibration_sha256 is None
    assert classifier.predict(sorted(SAMPLES.glob("test/ig/*.jpg"))[0]).label in meta.labels


def test_coreml_artefacts_carry_metadata_even_where_they_cannot_run(converted):
    ct = pytest.importorskip("coremltools")
    for precision in ("fp16", "int8", "int6", "int4"):
        entry = _entry(converted.manifest, "coreml", precision)
        stored = ct.models.MLModel(str(converted.out_dir / entry["file"]), skip_model_load=True).user_defined_metadata
        assert json.loads(stored["cellsdk"])["precision"] == precision
        if precision != "fp16":
            assert "needs macOS" in entry["quantization"]["activations"]


def test_manifest_records_everything(converted):
    manifest = json.loads((converted.out_dir / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(converted.manifest))
    assert manifest["calibration"]["images"] >= 64 and manifest["calibration"]["split"] == "train"
    listed = (converted.out_dir / "calibration_images.txt").read_text().split()
    assert len(listed) == manifest["calibration"]["images"] and all("/train/" in p for p in listed)
    assert manifest["evaluation"]["split"] == "val" and manifest["evaluation"]["images"] == 32
    assert {"torch", "onnxruntime", "cellsdk"} <= set(manifest["tools"]) and manifest["seconds"] > 0
    skipped = [a for a in manifest["artefacts"] if a["status"] == "skipped"]
    assert skipped and all("has no" in a["reasons"][0] or "not installed: pip install" in a["reasons"][0]
                           for a in skipped)  # e.g. torchscript fp16: said, not dropped
    from cellsdk._io import sha256_file

    onnx_entry = _entry(manifest, "onnx", "int8")
    assert sha256_file(converted.out_dir / onnx_entry["file"]) == onnx_entry["sha256"]
    xml_entry = _entry(manifest, "openvino", "fp32")
    assert [f["name"] for f in xml_entry["files"]] == ["model.fp32.xml", "model.fp32.bin"]
    assert xml_entry["runtime_options"] == {"precision": "f32"}
    table = format_manifest_table(manifest)
    assert "model.int8.onnx" in table and "not verified on this platform" in table
    assert not list(converted.out_dir.parent.glob(".out.staging-*"))


def test_runtime_picks_a_verified_artefact_from_the_folder(converted, monkeypatch):
    monkeypatch.setenv("CELLSDK_ENGINE_CHOICE", "recorded")  # the converting machine's latencies decide
    classifier = Classifier.load(converted.out_dir)
    chosen = next(a for a in converted.manifest["artefacts"] if a["file"] == classifier.path.name)
    assert chosen["status"] == "passed" and "ms at conversion" in classifier.chosen
    passed = [a["latency_ms"] for a in converted.manifest["artefacts"] if a["status"] == "passed"]
    assert chosen["latency_ms"] == min(passed)


def test_the_fastest_engine_is_measured_on_this_machine_once_and_cached(converted, monkeypatch, tmp_path):
    """Classifier.load(folder) times the verified ONNX Runtime and OpenVINO artefacts here and takes the fastest;
    the figures are cached per machine, so the next load does not measure again."""
    from cellsdk.artefacts import speed

    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CELLSDK_ENGINE_CHOICE", raising=False)
    timed: list[int] = []
    real = speed._time
    monkeypatch.setattr(speed, "_time", lambda backend, batch, rounds: timed.append(len(batch)) or real(backend, batch, 2))
    classifier = Classifier.load(converted.out_dir)
    assert "measured on this machine" in classifier.chosen, classifier.chosen
    cache = json.loads(next((tmp_path / "cache" / "speed").glob("*.json")).read_text())
    speeds = cache["speeds"]
    assert classifier.path.name in speeds and len(speeds) >= 2 and set(timed) == {1, 32}
    assert {a["backend"] for a in converted.manifest["artefacts"] if a["file"] in speeds} <= {"onnxruntime", "openvino"}
    fastest = min(speeds, key=lambda file: speeds[file]["per_image_ms"])
    assert classifier.path.name == fastest and cache["machine"]["cpu_class"]
    count = len(timed)
    assert Classifier.load(converted.out_dir).path.name == fastest and len(timed) == count  # from the cache


def test_broken_quantization_is_caught_by_the_gate(tiny_run, tmp_path):
    """int8 calibrated on constant images: the gate must fail it and name the classes."""
    from cellsdk.training import load_checkpoint

    model, metadata = load_checkpoint(tiny_run.best_checkpoint)
    images = evaluation_set(SAMPLES, metadata, data_cropped=True)
    constant = ImageSet(np.zeros((32, 3, 32, 32), np.float32), np.zeros(32, np.int64),
                        tuple(f"black{i}" for i in range(32)), "constant", "train")
    job = ExportJob(model=model, metadata=metadata, workdir=tmp_path, calibration=constant)
    target = tmp_path / "broken.int8.onnx"
    recipe = get_converter("onnx").convert(job, "int8", target)
    record = verify_artefact(target, "int8", job.metadata_for("int8", recipe), images,
                             reference_logits(model, images), VerifyConfig.default())
    assert record["status"] == "failed"
    assert any("recall of" in reason or "accuracy fell" in reason for reason in record["reasons"])


# ------------------------------------------------------------------ errors


def test_bad_options_fail_before_anything_is_written(tiny_run, tmp_path):
    ckpt = tiny_run.best_checkpoint
    with pytest.raises(ConfigError, match="unknown format 'tflite'"):
        ConvertConfig(formats=("tflite",))
    with pytest.raises(ConfigError, match="unknown precision int3"):
        ConvertConfig(precisions=("int3",))
    with pytest.raises(ConfigError, match="held-out images"):
        convert(ckpt, tmp_path / "a", ConvertConfig(formats=("onnx",)))
    with pytest.raises(ConfigError, match="int8 needs calibration images"):
        convert(ckpt, tmp_path / "a", ConvertConfig(formats=("onnx",), precisions=("int8",), eval=str(SAMPLES)))
    not_ckpt = tmp_path / "model.safetensors"
    not_ckpt.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a cellsdk checkpoint"):
        convert(not_ckpt, tmp_path / "a", ConvertConfig(formats=("onnx",), eval=str(SAMPLES)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        convert(ckpt, blocker / "out", ConvertConfig(formats=("onnx",), eval=str(SAMPLES), data_cropped=True))
    assert not (tmp_path / "a").exists()


def test_missing_package_names_the_extra(monkeypatch, tiny_run, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(BackendNotInstalledError, match=r"nncf.*pip install 'cellsdk\[openvino,convert\]'"):
        convert(tiny_run.best_checkpoint, tmp_path / "o", ConvertConfig(formats=("openvino",), eval=str(SAMPLES)))
    from cellsdk.converters.pipeline import _plan

    skipped = [reason for fmt, _, reason in _plan(ConvertConfig()) if fmt == "openvino"]
    assert skipped and all("nncf not installed: pip install 'cellsdk[openvino,convert]'" in r for r in skipped)


def test_calibration_rules(tiny_run):
    from cellsdk.training import read_checkpoint_metadata

    meta = read_checkpoint_metadata(tiny_run.best_checkpoint)
    calib = calibration_set(SAMPLES, meta, samples=40, seed=1, data_cropped=True)
    again = calibration_set(SAMPLES, meta, samples=40, seed=1, data_cropped=True)
    assert calib.ids == again.ids and calib.sha256 == again.sha256 and len(calib) == 40
    assert np.bincount(calib.targets, minlength=8).min() >= 5  # stratified: every class
    assert calibration_set(SAMPLES, meta, samples=40, seed=2, data_cropped=True).sha256 != calib.sha256
    with pytest.raises(ConfigError, match="500 calibration images asked for, 'train' has 128"):
        calibration_set(SAMPLES, meta, samples=500, data_cropped=True)
    assert len(calibration_set(SAMPLES, meta, samples=500, data_cropped=True, force=True)) == 128
    with pytest.raises(ConfigError, match="reuse evaluation images"):
        calibration_set(SAMPLES, meta, samples=16, split="val", data_cropped=True)
    with pytest.raises(ConfigError, match="also evaluation images"):
        calibration_set(SAMPLES, meta, samples=64, data_cropped=True, exclude=calib.ids)


def test_interrupted_conversion_keeps_the_old_folder_and_rerun_replaces_it(tiny_run, tmp_path, monkeypatch):
    import cellsdk.converters.pipeline as pipeline

    out = tmp_path / "out"
    config = ConvertConfig(formats=("onnx",), eval=str(SAMPLES), data_cropped=True, verify=TINY_GATE)
    convert(tiny_run.best_checkpoint, out, config, progress=False)
    (out / "stale.txt").write_text("from an earlier run")
    before = (out / "manifest.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "verify_artefact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_run.best_checkpoint, out, config, progress=False)
    assert (out / "manifest.json").read_text() == before and (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    monkeypatch.undo()
    convert(tiny_run.best_checkpoint, out, config, progress=False)
    assert not (out / "stale.txt").exists() and (out / "model.fp32.onnx").exists()


def test_cli_convert_table_and_exit_status(tiny_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cellsdk.converters.pipeline as pipeline
    from cellsdk.cli import convert_command

    runner = CliRunner()
    args = [str(tiny_run.best_checkpoint), "--out", str(tmp_path / "c"), "--formats", "onnx", "--eval", str(SAMPLES),
            "--data-cropped", "--quiet"]
    result = runner.invoke(convert_command, args)
    assert result.exit_code == 0, result.output
    assert "model.fp32.onnx" in result.output and "manifest.json" in result.output
    assert Classifier.load(tmp_path / "c" / "model.fp32.onnx").backend.max_batch is None  # dynamic by default
    static = runner.invoke(convert_command, [*args[:2], str(tmp_path / "s"), *args[3:], "--static-batch"])
    assert static.exit_code == 0, static.output
    assert Classifier.load(tmp_path / "s" / "model.fp32.onnx").backend.max_batch == 1

    def failing(*a, **k):
        return {"status": "failed", "reasons": ["recall of ig fell 5.00 points (limit 2.00)"], "images": 32}

    monkeypatch.setattr(pipeline, "verify_artefact", failing)
    result = runner.invoke(convert_command, args)
    assert result.exit_code == 1 and "recall of ig fell" in result.output and "failed verification" in result.output
    assert runner.invoke(convert_command, [*args, "--allow-regression"]).exit_code == 0
    bad = runner.invoke(convert_command, [*args, "--formats", "tflite"])
    assert bad.exit_code == 1 and "unknown format 'tflite'" in bad.output and "Traceback" not in bad.output


def test_input_size_and_dynamic_batch(tiny_run, tmp_path):
    config = ConvertConfig(formats=("onnx", "openvino"), eval=str(SAMPLES), data_cropped=True, input_size=48,
                           verify=TINY_GATE)  # a dynamic batch is the default
    result = convert(tiny_run.best_checkpoint, tmp_path / "out", config, progress=False)
    assert [a["status"] for a in result.manifest["artefacts"]] == ["passed", "passed"]
    for entry in result.manifest["artefacts"]:
        classifier = Classifier.load(tmp_path / "out" / entry["file"], **entry.get("runtime_options", {}))
        assert classifier.metadata.preprocessing.input_size == 48
        assert classifier.backend.input_shape[0] is None and classifier.backend.input_shape[2:] == (48, 48)
        assert classifier.predict_proba(sorted(SAMPLES.glob("test/*/*.jpg"))[:5]).shape == (5, 8)


@pytest.mark.slow  # converts a model to every format
def test_tf_same_padding_models_convert_everywhere(tmp_path):
    """timm's TF-ported nets pad from the input shape at run time; FX and CoreML need it frozen, exactly."""
    import copy

    import timm
    import torch

    from cellsdk.converters.torchscript import freeze_same_padding
    from cellsdk.metadata import ModelMetadata, Preprocessing

    model = timm.create_model("tf_efficientnet_lite0", num_classes=3).eval()
    frozen = copy.deepcopy(model)
    assert freeze_same_padding(frozen, 64) == 5
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), frozen(x))
    if get_converter("coreml").missing_packages():
        pytest.skip("coremltools is not installed")
    metadata = ModelMetadata(labels=("a", "b", "c"), arch="tf_efficientnet_lite0", preprocessing=Preprocessing(64))
    job = ExportJob(model=model, metadata=metadata, workdir=tmp_path)
    get_converter("coreml").convert(job, "fp16", tmp_path / "model.fp16.mlpackage")
    assert (tmp_path / "model.fp16.mlpackage" / "Manifest.json").is_file()


def test_torchscript_int8_is_right_whatever_the_source_memory_format(tiny_run, tmp_path):
    """FX int8 from a channels-last model once gave garbage; the converter must not depend on the layout."""
    import torch

    from cellsdk.training import load_checkpoint

    model, metadata = load_checkpoint(tiny_run.best_checkpoint)
    images = evaluation_set(SAMPLES, metadata, data_cropped=True)
    reference = reference_logits(model, images)
    assert all(p.is_contiguous() for p in model.parameters())  # the reference left the model as it was
    model = model.to(memory_format=torch.channels_last)
    calibration = calibration_set(SAMPLES, metadata, samples=64, data_cropped=True)
    job = ExportJob(model=model, metadata=metadata, workdir=tmp_path, calibration=calibration)
    target = tmp_path / "model.int8.torchscript"
    recipe = get_converter("torchscript").convert(job, "int8", target)
    record = verify_artefact(target, "int8", job.metadata_for("int8", recipe), images, reference, TINY_GATE)
    assert record["top1_agreement"] >= 0.8, record


def test_a_drop_exactly_at_the_limit_passes():
    """One image of 50 is exactly 2 points of recall: at the limit, not over it (float rounding aside)."""
    from cellsdk.converters.gate import judge
    from cellsdk.metadata import ModelMetadata, Preprocessing

    meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8))
    targets = np.array([0] * 50 + [1] * 50)
    reference = np.where(targets[:, None] == np.arange(2), 5.0, 0.0)
    flipped = reference.copy()
    flipped[0] = [0.0, 5.0]  # one 'a' of 50 now wrong
    gate = VerifyConfig(max_accuracy_drop=0.01, max_recall_drop=0.02)
    assert judge(flipped, "int8", meta, targets, reference, gate)["reasons"] == []
    flipped[1] = [0.0, 5.0]  # two of 50: 4 points
    assert any("recall of a fell 4.00" in r for r in judge(flipped, "int8", meta, targets, reference, gate)["reasons"])


@pytest.mark.slow  # one small conversion (~15 s)
def test_a_file_its_runtime_refuses_to_run_fails_that_artefact_not_the_conversion(tiny_checkpoint, tmp_path,
                                                                                 monkeypatch):
    """LiteRT's int8 Div kernel refused a barely trained EfficientViT-B0 at run time (``div.cc: data[i] !=
    zero``): the runtime's error fails that artefact, with the reason, and the others are still converted."""
    from cellsdk.converters import pipeline
    from tests.export_helpers import convert_tiny

    real = pipeline.verify_artefact

    def refusing(path, precision, *args, **kwargs):
        if precision == "fp16":
            raise RuntimeError("tflite/kernels/div.cc:262 data[i] != zero (0 != 0)")
        return real(path, precision, *args, **kwargs)

    monkeypatch.setattr(pipeline, "verify_artefact", refusing)
    result = convert_tiny(tiny_checkpoint, tmp_path / "out", ("onnx",), ("fp16",))
    entries = {a["file"]: a for a in result.manifest["artefacts"]}
    assert entries["model.fp32.onnx"]["status"] == "passed"
    fp16 = entries["model.fp16.onnx"]
    assert fp16["status"] == "failed" and fp16["reasons"][0].startswith("the converted file does not run: RuntimeError")
    assert not (result.out_dir / "model.fp16.onnx").exists()

"""Any timm architecture end to end, or a clear refusal (issue 16): training pre-checks, the toolchains' known
limits as reasons, and a small architecture matrix through the real CLI (benchmarks/studies/arch_matrix.py runs the
twenty-architecture version)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow  # trains and converts an architecture matrix

pytest.importorskip("timm", reason="training needs cellsdk[train]")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_fixed_size_models_are_built_for_the_asked_size_and_layout_faults_are_avoided() -> None:
    from cellsdk.training.models import create_model, size_kwargs, training_layout

    assert size_kwargs("vit_tiny_patch16_224", 64) == {"img_size": 64}
    assert size_kwargs("vit_tiny_patch16_224", 224) == {} and size_kwargs("resnet18", 64) == {}
    model, _ = create_model("test_vit", 3, "none", input_size=64)
    import torch

    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    layout, note = training_layout("fastvit_t8", True)
    assert layout is False and "channels-last crashes" in note
    assert training_layout("fastvit_t8", False) == (False, None) and training_layout("resnet18", True) == (True, None)


def test_a_size_an_architecture_cannot_take_is_refused_in_one_line_and_nothing_is_left(tmp_path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([_bin("cellsdk-train"), str(SAMPLES), "--out", str(out), "--arch", "levit_128s",
                           "--pretrained", "none", "--epochs", "1", "--input-size", "50", "--data-cropped", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "levit_128s cannot train at 50 px" in line and "--input-size 224" in line
    assert not out.exists() or not any(out.iterdir())


def test_fastvit_trains_in_the_layout_that_works_and_says_so(tmp_path) -> None:
    """channels-last FastViT crashes inside loss.backward() (double free, a torch / timm fault)."""
    out = tmp_path / "run"
    done = subprocess.run([_bin("cellsdk-train"), str(SAMPLES), "--out", str(out), "--arch", "fastvit_t8",
                           "--pretrained", "none", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
                           "--input-size", "32", "--data-cropped", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not channels-last" in done.stderr and (out / "best.safetensors").is_file()
    import json

    assert json.loads((out / "config.json").read_text())["channels_last"] is False


def test_coreml_converts_attention_blocks_with_numpy_2_4() -> None:
    """coremltools 9.0 folds ``int(array)``, which numpy 2.4 refuses for one-element arrays; the converter's fix."""
    ct = pytest.importorskip("coremltools", reason="CoreML conversion needs cellsdk[coreml]")
    import warnings

    import numpy as np
    import timm
    import torch

    from cellsdk.converters.coreml import scalar_cast_fix

    model = timm.create_model("efficientvit_b0", num_classes=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.zeros(1, 3, 64, 64))

        def convert():
            return ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(1, 3, 64, 64))],
                              convert_to="mlprogram", minimum_deployment_target=ct.target.macOS13)

        buggy = tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4) and ct.__version__ == "9.0"
        if buggy:
            with pytest.raises(TypeError, match="0-dimensional arrays"):
                convert()
        with scalar_cast_fix() as patched:
            assert convert() is not None
    assert patched == (tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4))


#: timm's test-sized models of three families: transformer, convolutional (a norm after pooling: no CAM
#: output) and hybrid (convolution + attention); the mobile family (test_efficientnet) goes through every
#: format and precision in the suite's `converted` fixture
CI_ARCHITECTURES = ("test_vit", "test_convnext", "test_coatnet")


@pytest.mark.parametrize("arch", CI_ARCHITECTURES)
def test_the_architecture_matrix_every_artefact_passes_or_says_why(arch, tmp_path) -> None:
    from cellsdk.benchmarks.studies.arch_matrix import ARTEFACTS, MatrixConfig, format_matrix, run_matrix

    # the desktop formats here; the phone formats (LiteRT, ExecuTorch) have their own test modules and columns
    report = run_matrix(MatrixConfig(data=str(SAMPLES), archs=(arch,), input_size=32, work=str(tmp_path),
                                     formats="onnx,torchscript,openvino,coreml"))
    expected = {a for a in ARTEFACTS if not a.endswith((".tflite", ".pte"))}
    for row in report["rows"]:
        assert row["train"].startswith("ok") and row["convert"] == "ok", row
        assert expected <= set(row["artefacts"]), row["arch"]  # (plus the skipped fp16 TorchScript)
        for name, entry in row["artefacts"].items():
            assert entry["status"] in ("passed", "failed", "skipped", "not verified on this platform"), (name, entry)
            if entry["status"] != "passed":
                assert entry["reasons"] and not entry["reasons"][0].startswith("conversion failed"), (name, entry)
            if name.endswith((".fp32.onnx", ".fp16.onnx", ".fp32.xml", ".fp16.xml", ".fp32.torchscript")):
                assert entry["status"] == "passed" and entry["agreement"] == 1.0, (row["arch"], name, entry)
    text = format_matrix(report)
    assert f"| {arch} | ok |" in text
    if arch == "test_vit":  # attention blocks: FX cannot trace them, refused with the reason
        entry = report["rows"][0]["artefacts"]["model.int8.torchscript"]
        assert entry["status"] == "skipped" and "torch FX cannot quantize test_vit" in entry["reasons"][0]
        assert "torch FX cannot quantize" in text


def test_the_float16_pass_repeating_a_cast_is_repaired() -> None:
    """ONNX Runtime's float16 pass casts one EdgeNeXt tensor twice with identical node and value names."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cellsdk.converters.base import Refused
    from cellsdk.converters.onnx import unique_node_names

    cast = helper.make_node("Cast", ["x"], ["x_fp32"], name="cast_x", to=TensorProto.FLOAT)
    again = helper.make_node("Cast", ["x"], ["x_fp32"], name="cast_x", to=TensorProto.FLOAT)
    relu = helper.make_node("Relu", ["x_fp32"], ["y"], name="relu")
    neg = helper.make_node("Neg", ["x_fp32"], ["z"], name="relu")  # a different node reusing a name
    graph = helper.make_graph([cast, again, relu, neg], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
        ort.InferenceSession(model.SerializeToString())
    fixed = unique_node_names(model)
    assert [n.name for n in fixed.graph.node] == ["cast_x", "relu", "relu_1"]
    y, z = ort.InferenceSession(fixed.SerializeToString()).run(None, {"x": np.array([-1.0, 2.0], np.float32)})
    assert y.tolist() == [0.0, 2.0] and z.tolist() == [1.0, -2.0]
    clash = helper.make_node("Neg", ["x"], ["x_fp32"], name="other")
    broken = helper.make_model(helper.make_graph([cast, clash], "g", graph.input, [graph.output[0]]),
                               opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(Refused, match="defines 'x_fp32' twice"):
        unique_node_names(broken)
    assert onnx is not None

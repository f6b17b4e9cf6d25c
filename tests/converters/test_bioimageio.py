"""bioimage.io model packages: cellsdk export --bioimageio, bioimage.io's own test, and Classifier.load on a package
(ours, and one made elsewhere)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cellsdk import Classifier
from cellsdk.errors import SelfCheckError, UnsupportedFormatError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
TINY = ROOT / "tests" / "data" / "tiny_test_efficientnet.safetensors"
NO_SPEC = importlib.util.find_spec("bioimageio") is None or importlib.util.find_spec("bioimageio.spec") is None
NO_CORE = NO_SPEC or importlib.util.find_spec("bioimageio.core") is None
needs_spec = pytest.mark.skipif(NO_SPEC, reason="bioimageio.spec is not installed: pip install 'cellsdk[bioimageio]'")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The committed tiny checkpoint, converted (ONNX, TorchScript) and exported as a bioimage.io package."""
    if NO_SPEC:
        pytest.skip("bioimageio.spec is not installed: pip install 'cellsdk[bioimageio]'")
    from cellsdk.converters.bioimageio import BioimageioConfig, export_bioimageio

    out = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    result = export_bioimageio(TINY, out, BioimageioConfig(data=str(SAMPLES / "bloodmnist_128"), data_cropped=True,
                                                           authors=("Test Author",)))
    assert result.weights == ("pytorch_state_dict", "onnx", "torchscript") and result.notes == ()
    return result.path


def _source(entry: str | dict) -> str:
    return entry["source"] if isinstance(entry, dict) else entry


def _description(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n in ("rdf.yaml", "bioimageio.yaml"))
        return yaml.safe_load(archive.read(name))


@needs_spec
def test_the_package_describes_the_model_in_the_spec_with_what_it_cannot_express_said_plainly(package):
    description = _description(package)
    metadata = Classifier.load(package, self_check=False).metadata
    labels, spec = metadata.labels, metadata.preprocessing
    assert description["type"] == "model" and description["format_version"].startswith("0.5")
    assert set(description["weights"]) == {"onnx", "torchscript", "pytorch_state_dict"}
    [inp] = description["inputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert [p["id"] for p in inp["preprocessing"]] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
    kwargs = inp["preprocessing"][1]["kwargs"]  # (x / 255 - mean) / std = x * gain + offset
    assert kwargs["gain"] == pytest.approx([1 / (255 * s) for s in spec.std])
    assert kwargs["offset"] == pytest.approx([-m / s for m, s in zip(spec.mean, spec.std, strict=True)])
    outputs = {o["id"]: o for o in description["outputs"]}
    assert outputs["probabilities"]["axes"][1]["channel_names"] == list(labels)
    assert set(outputs) == {"probabilities", "features", "cams"}
    assert {c["doi"] for c in description["cite"]} == {"10.1038/s41597-022-01721-8", "10.1016/j.dib.2020.105474"}
    assert description["license"] == "CC-BY-4.0" and description["authors"] == [{"name": "Test Author"}]
    with zipfile.ZipFile(package) as archive:
        documentation = archive.read(_source(description["documentation"])).decode()
        test_input = np.load(archive.open(_source(inp["test_tensor"])))
        names = set(archive.namelist())
    assert "# Validation" in documentation and "centre crop: a 200 px square" in documentation
    assert description["config"]["cellsdk"]["not_expressed_in_spec"][0].startswith("centre crop")
    assert {"cover.png", "cellsdk_architecture.py", "weights.pt", "model.onnx", "model.torchscript"} <= names
    assert test_input.dtype == np.uint8 and test_input.shape == (8, 3, 32, 32)  # one held-out image per class
    assert len(description["config"]["cellsdk"]["test_images"]) == 8


@pytest.mark.skipif(NO_CORE, reason="bioimageio.core is not installed: pip install 'cellsdk[bioimageio]'")
def test_bioimageio_test_passes_on_every_weights_format(package):
    command = Path(sys.executable).with_name("bioimageio")
    run = subprocess.run([str(command), "test", str(package)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_COLOR": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from cellsdk.converters.bioimageio import test_package

    passed, summary = test_package(package)
    assert passed, summary
    for fmt in ("onnx", "torchscript", "pytorch_state_dict"):
        assert f"passed  Reproduce test outputs from test inputs ({fmt})" in summary


@needs_spec
def test_classifier_load_runs_our_package_like_the_onnx_inside_with_guard_and_explanations(package, tmp_path):
    classifier = Classifier.load(package)
    assert classifier.guard is not None and classifier.self_check.status == "passed"
    image = SAMPLES / "pbc_raw" / "ig" / "MMY_163947.jpg"
    with zipfile.ZipFile(package) as archive:
        inside = Classifier.load(archive.extract("model.onnx", tmp_path))
    assert classifier.predict(image).probabilities == pytest.approx(inside.predict(image).probabilities, abs=1e-6)
    assert classifier.explain(image).heatmap.shape == (363, 360)
    assert Classifier.load(package).path == classifier.path  # extracted once, by content
    from cellsdk.cli.info import info_command

    shown = CliRunner().invoke(info_command, [str(package)]).output.splitlines()
    assert "bioimage.io package" in shown[0] and "cellsdk runs model.onnx" in shown[0]
    assert any(line.startswith("OOD guard:") for line in shown)


@needs_spec
def test_export_refuses_what_it_cannot_package_in_one_line(tmp_path):
    from cellsdk.cli.export import export_command

    runner = CliRunner()
    result = runner.invoke(export_command, [str(TINY), "--bioimageio", str(tmp_path / "x.zip")])
    assert result.exit_code == 1 and "pass --data DATA" in result.output and "Traceback" not in result.output
    result = runner.invoke(export_command, [str(TINY), "--bioimageio", str(tmp_path / "x.tar")])
    assert result.exit_code == 1 and "is a .zip" in result.output
    result = runner.invoke(export_command, [str(tmp_path), "--bioimageio", str(tmp_path / "x.zip")])
    assert result.exit_code == 1 and "not a checkpoint" in result.output
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"artefacts": []}')
    result = runner.invoke(export_command, [str(folder), "--bioimageio", str(tmp_path / "x.zip")])
    assert result.exit_code == 1 and "no verified fp32 ONNX" in result.output
    result = runner.invoke(export_command, [str(folder), "--bioimageio", str(tmp_path / "x.zip"), "--weights", "tflite"])
    assert result.exit_code == 1 and "weights" in result.output and "Traceback" not in result.output
    result = runner.invoke(export_command, [str(folder), "--bioimageio", str(tmp_path / "x.zip"), "--name", "a, b"])
    assert result.exit_code == 1 and "bioimage.io takes 5 to 128 letters" in result.output
    assert not (tmp_path / "x.zip").exists()


# --- a package made elsewhere ------------------------------------------------------------------------------------


def _foreign_package(folder: Path, *, preprocessing: list[dict] | None = None, wrong_output: bool = False,
                     weights: str = "onnx") -> Path:
    """A 3-class classifier packaged without cellsdk: an ONNX graph (global average pool -> linear) made with
    onnx.helper, per-channel fixed normalisation, softmax post-processing, channel names as labels."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'cellsdk[convert]'")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[4.0, -2.0, -2.0], [-2.0, 4.0, -2.0], [-2.0, -2.0, 4.0]], np.float32)
    bias = np.zeros(3, np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1)],
        "colours", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "colours.onnx")
    mean, std = [100.0, 110.0, 120.0], [50.0, 55.0, 60.0]
    rng = np.random.default_rng(0)
    test_input = np.zeros((3, 3, 16, 16), np.float32)
    for c in range(3):  # one red, one green, one blue image
        test_input[c] = rng.uniform(90, 130, size=(3, 16, 16))
        test_input[c, c] += 80
    normalised = (test_input - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    logits = normalised.mean(axis=(2, 3)) @ weight.T + bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.save(folder / "input.npy", test_input)
    np.save(folder / "output.npy", (expected[::-1] if wrong_output else expected).astype(np.float32))
    steps = preprocessing if preprocessing is not None else [
        {"id": "fixed_zero_mean_unit_variance", "kwargs": {"axis": "channel", "mean": mean, "std": std}}]
    weights_entry = ({"onnx": {"source": "colours.onnx", "opset_version": 17}} if weights == "onnx" else
                     {"pytorch_state_dict": {"source": "colours.onnx", "pytorch_version": "2.0",
                                             "architecture": {"callable": "Net", "import_from": "nets"}}})
    description = {
        "type": "model", "format_version": "0.5.4", "name": "colour classifier", "description": "red, green or blue",
        "authors": [{"name": "Someone Else"}], "cite": [{"text": "none", "url": "https://example.org"}],
        "license": "MIT", "documentation": "README.md",
        "inputs": [{"id": "image", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["r", "g", "b"]},
                                            {"type": "space", "id": "y", "size": 16},
                                            {"type": "space", "id": "x", "size": 16}],
                    "test_tensor": {"source": "input.npy"}, "data": {"type": "float32"}, "preprocessing": steps}],
        "outputs": [{"id": "probabilities", "axes": [{"type": "batch"},
                                                     {"type": "channel", "channel_names": ["red", "green", "blue"]}],
                     "test_tensor": {"source": "output.npy"}, "postprocessing": [{"id": "softmax"}]}],
        "weights": weights_entry,
    }
    (folder / "README.md").write_text("# colours\n\n# Validation\n\nNone.\n")
    (folder / "rdf.yaml").write_text(yaml.safe_dump(description, sort_keys=False))
    out = folder.with_suffix(".zip")
    with zipfile.ZipFile(out, "w") as archive:
        for path in folder.iterdir():
            archive.write(path, path.name)
    return out


def test_a_package_made_elsewhere_loads_with_its_labels_normalisation_and_its_own_test_reproduced(tmp_path):
    path = _foreign_package(tmp_path / "colours")
    if not NO_SPEC:  # a real bioimage.io description, as the spec validates it
        from bioimageio.spec import InvalidDescr, load_description

        assert not isinstance(load_description(tmp_path / "colours" / "rdf.yaml"), InvalidDescr)
    classifier = Classifier.load(path)
    assert classifier.labels == ("red", "green", "blue")
    spec = classifier.metadata.preprocessing
    assert spec.input_size == 16 and spec.crop_mode == "none"
    assert spec.mean == pytest.approx((100 / 255, 110 / 255, 120 / 255)) and spec.std == pytest.approx(
        (50 / 255, 55 / 255, 60 / 255))
    blue = np.zeros((16, 16, 3), np.uint8)
    blue[..., 2] = 250
    blue[..., :2] = 100
    assert classifier.predict(blue).label == "blue"
    assert classifier.guard is None  # no cellsdk guard in a package made elsewhere; predictions say ok
    from cellsdk.artefacts.info import describe

    summary = describe(path).splitlines()
    assert "bioimage.io package 'colour classifier'" in summary[0] and summary[1] == "labels: red, green, blue"


def test_a_package_cellsdk_cannot_run_is_refused_with_the_reason(tmp_path):
    per_image = _foreign_package(tmp_path / "zmuv", preprocessing=[
        {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}])
    with pytest.raises(UnsupportedFormatError, match="'zero_mean_unit_variance' is not a fixed scaling"):
        Classifier.load(per_image)
    state_dict_only = _foreign_package(tmp_path / "torch", weights="pytorch_state_dict")
    with pytest.raises(UnsupportedFormatError, match="cellsdk runs ONNX or TorchScript weights"):
        Classifier.load(state_dict_only)
    inconsistent = _foreign_package(tmp_path / "wrong", wrong_output=True)
    with pytest.raises(SelfCheckError, match="does not run correctly on this machine"):
        Classifier.load(inconsistent)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UnsupportedFormatError, match=r"broken\.zip"):
        Classifier.load(broken)


def test_a_spec_0_4_package_loads_with_its_fixed_normalisation_and_labels_given_by_the_caller(tmp_path):
    """Spec 0.4: axes as letters, test tensors listed at the top, fixed zero_mean_unit_variance, no channel names."""
    zipped = _foreign_package(tmp_path / "v05")  # the same graph and tensors, re-described in spec 0.4
    folder = tmp_path / "v04"
    with zipfile.ZipFile(zipped) as archive:
        archive.extractall(folder)
    (folder / "rdf.yaml").unlink()
    test_input = np.load(folder / "input.npy")  # 0.4 has no softmax: its test output is the graph's logits
    normalised = (test_input - np.array([100.0, 110.0, 120.0])[None, :, None, None]) / np.array(
        [50.0, 55.0, 60.0])[None, :, None, None]
    weight = np.array([[4.0, -2.0, -2.0], [-2.0, 4.0, -2.0], [-2.0, -2.0, 4.0]])
    np.save(folder / "output.npy", (normalised.mean(axis=(2, 3)) @ weight.T).astype(np.float32))
    description = {
        "format_version": "0.4.10", "type": "model", "name": "colour classifier 04", "description": "red, green or blue",
        "authors": [{"name": "Someone Else"}], "cite": [{"text": "none", "url": "https://example.org"}],
        "license": "MIT", "documentation": "README.md", "timestamp": "2024-01-01T00:00:00",
        "test_inputs": ["input.npy"], "test_outputs": ["output.npy"],
        "inputs": [{"name": "image", "axes": "bcyx", "data_type": "float32", "data_range": [0.0, 255.0],
                    "shape": [1, 3, 16, 16],
                    "preprocessing": [{"name": "zero_mean_unit_variance",
                                       "kwargs": {"mode": "fixed", "axes": "xy", "mean": [100.0, 110.0, 120.0],
                                                  "std": [50.0, 55.0, 60.0]}}]}],
        "outputs": [{"name": "logits", "axes": "bc", "data_type": "float32", "shape": [1, 3]}],
        "weights": {"onnx": {"source": "colours.onnx", "opset_version": 17}},
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(description, sort_keys=False))
    if not NO_SPEC:
        from bioimageio.spec import InvalidDescr, load_description

        assert not isinstance(load_description(folder / "rdf.yaml"), InvalidDescr)
    unnamed = Classifier.load(folder / "rdf.yaml")  # a folder's description file loads too
    assert unnamed.labels == ("class_0", "class_1", "class_2") and unnamed.metadata.output == "logits"
    named = Classifier.load(folder / "rdf.yaml", labels=["red", "green", "blue"])
    assert named.metadata.preprocessing.std == pytest.approx((50 / 255, 55 / 255, 60 / 255))
    green = np.full((16, 16, 3), 100, np.uint8)
    green[..., 1] = 250
    assert named.predict(green).label == "green"


def test_the_extra_resolves_a_working_spec_and_pydantic_pair_and_a_broken_one_is_named_with_its_fix():
    import configparser

    from cellsdk.converters.bioimageio import SPEC_FIX, version_problem

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extra = config["options.extras_require"]["bioimageio"]
    assert "bioimageio.core>=0.11,<0.12" in extra and "pydantic>=2.7,<2.14" in extra  # 0.11 pins spec 0.5.12.0
    assert version_problem() is None  # what scripts/setup.sh installed works
    problem = version_problem({"bioimageio.spec": "0.5.12.0", "pydantic": "2.14.3"})
    assert problem is not None and problem.endswith(SPEC_FIX) and "\n" not in problem
    assert version_problem({"bioimageio.spec": "0.5.12.0", "pydantic": "2.13.5"}) is None

"""Classifier.explain: class activation maps in the runtimes, aligned with the raw image.

A hand-made "blob detector" (timm's interface: forward_features -> 8 x 8 feature grid, global average pooling,
one Linear) is exported with the converters' own output wrapper, so the map's peak must sit on a red blob
drawn anywhere in the image, crop and resize undone. The tiny trained model of the suite goes through
cellsdk-convert into every format, and each artefact's maps must agree with the PyTorch ones.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cellsdk import Classifier
from cellsdk.errors import ConfigError, ExplanationUnavailableError
from cellsdk.explain import CAMS_OUTPUT, align_map, cam_grids, colorize, overlay, resolve_target
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.tta import expand, unview

torch = pytest.importorskip("torch")

SIZE = 64  # model input; 8 x 8 feature grid


class BlobNet(torch.nn.Module):
    """Class 0 ("red") is evidence of red blobs, class 1 ("plain") its opposite; a timm-like head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -0.5, -0.5], [-1.0, 0.5, 0.5]])[:, :, None, None])
            self.conv.bias.zero_()
        self.pool = torch.nn.AvgPool2d(8)
        self.fc = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.02]))

    def forward_features(self, x):
        return torch.relu(self.pool(self.conv(x)))

    def forward_head(self, x, pre_logits: bool = False):
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _metadata(crop: int | None) -> ModelMetadata:
    spec = Preprocessing(input_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         crop_mode="pixels" if crop else "none", crop_value=float(crop or 1.0))
    return ModelMetadata(labels=("red", "plain"), arch="blobnet", preprocessing=spec, outputs=("logits", CAMS_OUTPUT))


def _export(tmp_path: Path, crop: int | None, outputs=("logits", CAMS_OUTPUT)) -> Path:
    import onnx

    from cellsdk.converters.heads import with_outputs
    from cellsdk.metadata import METADATA_KEY

    wrapped = with_outputs(BlobNet().eval(), outputs)
    path = tmp_path / f"blob-{crop}-{len(outputs)}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (torch.rand(2, 3, SIZE, SIZE),), dynamo=True, external_data=False,
                                    verbose=False, input_names=["input"], output_names=list(outputs),
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    program.save(str(path))
    proto = onnx.load(str(path))
    metadata = _metadata(crop).replace(outputs=tuple(outputs))
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata.to_json()})
    onnx.save(proto, str(path))
    return path


def _blob_image(size: tuple[int, int], centre: tuple[int, int], radius: int = 9) -> Image.Image:
    image = Image.new("RGB", size, (200, 200, 200))
    x, y = centre
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 0, 0))
    return image


@pytest.fixture(scope="module")
def blob_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blob")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {crop: Classifier.load(_export(folder, crop)) for crop in (None, 100)}


@pytest.mark.parametrize("centre", [(30, 25), (120, 90), (70, 100)])
def test_the_peak_follows_an_off_centre_blob_in_raw_image_pixels(blob_models, centre):
    image = _blob_image((160, 120), centre)  # not square, so the resize (no crop) stretches: undone too
    explanation = blob_models[None].explain(image)
    assert explanation.heatmap.shape == (120, 160) and explanation.heatmap.dtype == np.float32
    assert explanation.target == "red" and explanation.prediction.label == "red"
    assert float(explanation.heatmap.min()) >= 0.0 and float(explanation.heatmap.max()) == pytest.approx(1.0)
    y, x = np.unravel_index(int(np.argmax(explanation.heatmap)), explanation.heatmap.shape)
    assert abs(x - centre[0]) <= 12 and abs(y - centre[1]) <= 12, (x, y, centre)  # within one grid cell
    assert explanation.box == (0, 0, 160, 120) and explanation.cam.shape == (8, 8)


def test_the_crop_is_undone_and_what_the_model_never_saw_is_zero(blob_models):
    model = blob_models[100]  # centre 100 px of a 200 x 160 image: box (50, 30, 150, 130)
    inside = model.explain(_blob_image((200, 160), (130, 50), radius=6))
    assert inside.box == (50, 30, 150, 130)
    y, x = np.unravel_index(int(np.argmax(inside.heatmap)), inside.heatmap.shape)
    assert abs(x - 130) <= 8 and abs(y - 50) <= 8, (x, y)
    assert float(inside.heatmap[:30].max()) == 0.0 and float(inside.heatmap[:, :50].max()) == 0.0
    # a blob outside the crop is not seen: no red evidence anywhere, so the red map is all zeros
    outside = model.explain(_blob_image((200, 160), (20, 20), radius=10), target="red")
    assert float(outside.heatmap.max()) == 0.0 and outside.prediction.label == "plain"


def test_cams_are_the_logits_spatial_decomposition(blob_models):
    model = blob_models[None]
    image = _blob_image((64, 64), (20, 40))
    outputs = model.run_outputs(model.inference.prepare(image).array[None])
    cams = cam_grids(outputs[CAMS_OUTPUT], 2)
    bias = np.array([0.0, 0.02])
    assert np.allclose(cams.mean(axis=(2, 3)) + bias, outputs["logits"], atol=1e-5)
    explanation = model.explain(image, target=1)
    assert explanation.target == "plain" and explanation.index == 1
    assert explanation.cam.mean() + 0.02 == pytest.approx(float(outputs["logits"][0, 1]), abs=1e-5)


def test_tta_maps_are_turned_back_before_averaging(blob_models):
    model = blob_models[None]
    image = _blob_image((64, 64), (14, 50))
    plain, averaged = model.explain(image), model.explain(image, tta="dihedral")
    # the blob net is equivariant to flips / right-angle rotations, so the 8 turned-back maps agree
    assert np.allclose(plain.cam, averaged.cam, atol=1e-4)
    assert averaged.prediction.probabilities["red"] == pytest.approx(plain.prediction.probabilities["red"], abs=1e-5)
    x = np.random.default_rng(0).random((3, 2, 5, 5)).astype(np.float32)
    assert np.allclose(unview(expand(x, "dihedral"), "dihedral"), x)


def test_overlay_png_and_helpers(blob_models, tmp_path):
    explanation = blob_models[None].explain(_blob_image((90, 70), (20, 20)))
    picture = explanation.overlay(alpha=0.6)
    assert picture.size == (90, 70) and picture.mode == "RGB"
    pixels = np.asarray(picture).astype(int)
    original = np.asarray(explanation.image).astype(int)
    cold = explanation.heatmap == 0
    assert np.array_equal(pixels[cold], original[cold])  # no colour where the model saw no evidence
    assert not np.array_equal(pixels[~cold], original[~cold])
    saved = explanation.save(tmp_path / "o.png")
    assert Image.open(saved).size == (90, 70)
    assert explanation.png(max_side=45)[:8] == b"\x89PNG\r\n\x1a\n"
    assert colorize(np.array([[0.0, 1.0]])).shape == (1, 2, 3)
    summary = explanation.to_dict()
    assert summary["target"] == "red" and summary["method"] == "cam" and summary["grid"] == [8, 8]
    with pytest.raises(ConfigError, match="alpha"):
        overlay(explanation.image, explanation.heatmap, alpha=2)
    with pytest.raises(ConfigError, match="differ in size"):
        overlay(Image.new("RGB", (10, 10)), explanation.heatmap)


def test_bad_targets_and_models_without_maps_say_what_to_do(blob_models, tmp_path):
    model = blob_models[None]
    with pytest.raises(ConfigError, match=r"target='blue'.*red, plain"):
        model.explain(_blob_image((64, 64), (20, 20)), target="blue")
    with pytest.raises(ConfigError, match=r"index 0\.\.1"):
        resolve_target(5, model.labels)
    assert resolve_target(None, model.labels) is None and resolve_target("plain", model.labels) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Classifier.load(_export(tmp_path, None, outputs=("logits",)))
    with pytest.raises(ExplanationUnavailableError, match=r"no class-activation-map output.*grad_cam"):
        plain.explain(_blob_image((64, 64), (20, 20)))
    with pytest.raises(ExplanationUnavailableError, match="not N x 2 x h x w"):
        cam_grids(np.zeros((1, 7)), 2)
    assert cam_grids(np.zeros((3, 2 * 16)), 2).shape == (3, 2, 4, 4)  # a flattened output (CoreML) is regridded


def test_align_map_geometry():
    cam = np.zeros((2, 2), dtype=np.float32)
    cam[1, 0] = 3.0
    heat = align_map(cam, (100, 50), (20, 0, 70, 50))
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert heat.shape == (50, 100) and 20 <= x < 45 and y >= 25
    assert float(align_map(-np.ones((2, 2)), (10, 10), (0, 0, 10, 10)).max()) == 0.0  # no positive evidence


def test_head_checks_tell_cam_capable_models_from_others():
    from cellsdk.converters.heads import cam_support, with_outputs

    assert cam_support(BlobNet()) is None

    class NormAfterPool(BlobNet):
        def forward_head(self, x, pre_logits: bool = False):
            pooled = torch.nn.functional.layer_norm(x.mean(dim=(2, 3)), (2,))
            return pooled if pre_logits else self.fc(pooled)

    assert "more than global average pooling" in cam_support(NormAfterPool())
    with pytest.raises(ConfigError, match="no class activation maps"):
        with_outputs(NormAfterPool(), ("logits", CAMS_OUTPUT))
    assert "forward_features" in cam_support(torch.nn.Linear(2, 2))


def test_every_converted_artefact_explains_like_pytorch(converted, tiny_checkpoint):
    """cellsdk-convert gives every format a ``cams`` output, float even in int8 artefacts, equal to the PyTorch
    model's class activation maps (the tiny model's 32 px input makes a 1 x 1 grid: the per-class values)."""
    from cellsdk.backends import backend_for_path
    from cellsdk.converters.heads import with_outputs
    from cellsdk.training.checkpoint import load_checkpoint
    from tests.conftest import SAMPLES

    assert converted.manifest["explanations"]["output"] == CAMS_OUTPUT
    model, _ = load_checkpoint(tiny_checkpoint)
    torch_cams = with_outputs(model, ("logits", CAMS_OUTPUT))
    image = sorted(SAMPLES.glob("test/eosinophil/*.jpg"))[0]
    checked = []
    for entry in converted.manifest["artefacts"]:
        path = converted.out_dir / entry["file"]
        if entry["status"] == "skipped" or backend_for_path(path).unavailable_reason():
            continue
        classifier = Classifier.load(path, **entry.get("runtime_options", {}))
        assert classifier.metadata.outputs == ("logits", "features", CAMS_OUTPUT), entry["file"]
        batch = classifier.inference.prepare(image).array[None]
        with torch.no_grad():
            reference = torch_cams(torch.from_numpy(batch))[1].numpy()
        cams = cam_grids(classifier.run_outputs(batch)[CAMS_OUTPUT], len(classifier.labels))
        assert cams.shape == reference.shape, entry["file"]
        spread = float(np.ptp(reference))
        tolerance = 0.02 if entry["precision"] in ("fp32", "fp16") else 0.25  # of the spread across classes
        assert np.abs(cams - reference).max() <= tolerance * spread, (entry["file"], cams.ravel(), reference.ravel())
        explanation = classifier.explain(image)
        assert explanation.heatmap.shape == (128, 128) and explanation.target == explanation.prediction.label
        checked.append(entry["file"])
        if entry["format"] == "onnx" and entry["precision"] == "int8":
            assert entry["quantization"]["float_nodes"], entry["quantization"]  # the CAM convolution stays float
    assert {"model.fp32.onnx", "model.int8.onnx", "model.fp32.torchscript", "model.fp32.xml"} <= set(checked)


def test_grad_cam_from_pytorch_finds_the_blob_and_explains_heads_cam_cannot(tmp_path):
    pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package is not installed (cellsdk[explain])")
    from cellsdk.training.gradcam import grad_cam

    image = _blob_image((160, 120), (120, 30))
    explanation = grad_cam(BlobNet().eval(), image, metadata=_metadata(None))
    assert explanation.method == "grad-cam" and explanation.target == "red" and explanation.heatmap.shape == (120, 160)
    y, x = np.unravel_index(int(np.argmax(explanation.heatmap)), explanation.heatmap.shape)
    assert abs(x - 120) <= 12 and abs(y - 30) <= 12, (x, y)

    class ConvAfterPool(BlobNet):  # a head CAM cannot decompose (like MobileNetV3's): Grad-CAM still explains it
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 2)
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(2) * 2)
                self.head.bias.zero_()

        def forward_head(self, x, pre_logits: bool = False):
            pooled = torch.relu(self.head(x.mean(dim=(2, 3))))
            return pooled if pre_logits else self.fc(pooled)

    from cellsdk.converters.heads import cam_support

    assert cam_support(ConvAfterPool()) is not None
    other = grad_cam(ConvAfterPool().eval(), image, metadata=_metadata(None))
    y, x = np.unravel_index(int(np.argmax(other.heatmap)), other.heatmap.shape)
    assert abs(x - 120) <= 12 and abs(y - 30) <= 12, (x, y)


def test_cli_predict_explain_writes_one_overlay_per_image(converted, tmp_path):
    import json

    from click.testing import CliRunner

    from cellsdk.cli import cli
    from tests.conftest import SAMPLES

    model = converted.out_dir / "model.int8.onnx"
    folder = SAMPLES / "test" / "platelet"
    out = tmp_path / "overlays"
    result = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(model), "--explain", str(out), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    images = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    assert len(records) == len(images) and sorted(p.name for p in out.iterdir()) == sorted(
        Path(r["explanation"]).name for r in records)
    for record in records:
        assert Image.open(record["explanation"]).size == (128, 128)
        assert record["explained_target"] == record["label"] and len(record["explained_box"]) == 4
    # a broken file among good ones: reported, skipped, the rest still explained; exit status 1
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jpg").write_bytes(images[0].read_bytes())
    (mixed / "b.jpg").write_bytes(b"not an image")
    result = CliRunner().invoke(cli, ["predict", str(mixed), "--model", str(model), "--explain", str(tmp_path / "m")])
    assert result.exit_code == 1 and "b.jpg" in result.stderr and "Traceback" not in result.output
    assert [p.name for p in (tmp_path / "m").iterdir()] == [f"a.{result.stdout.split()[1]}.png"]
    result = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(model), "--explain", str(out),
                                      "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "--explain" in result.output


def test_cli_explain_refuses_models_without_maps_in_one_line(tmp_path):
    from click.testing import CliRunner

    from cellsdk.cli import cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _export(tmp_path, None, outputs=("logits",))
    _blob_image((64, 64), (20, 20)).save(tmp_path / "blob.png")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "blob.png"), "--model", str(plain), "--explain",
                                      str(tmp_path / "o")])
    assert result.exit_code == 1 and "no class-activation-map output" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and not (tmp_path / "o").exists()


def test_cli_eval_explain_writes_a_labelled_montage(converted, tmp_path):
    from click.testing import CliRunner

    from cellsdk.cli import eval_command
    from tests.conftest import SAMPLES

    out = tmp_path / "eval"
    result = CliRunner().invoke(eval_command, [str(converted.out_dir / "model.int8.onnx"), "--data", str(SAMPLES),
                                               "--data-cropped", "--out", str(out), "--explain", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    chosen = report["explanations"]
    assert len(chosen["correct"]) == 3 and len(chosen["errors"]) <= 3 and "explanations.png" in result.output
    sheet = Image.open(out / "explanations.png")
    assert sheet.width >= 3 * 176 and sheet.height > 2 * 176
    result = CliRunner().invoke(eval_command, [str(converted.out_dir / "model.int8.onnx"), "--data", str(SAMPLES),
                                               "--explain", "3"])
    assert result.exit_code == 1 and "needs out_dir" in result.output

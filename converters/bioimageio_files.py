"""The files of a bioimage.io package besides the weights: test tensors from held-out images, the cover (a montage
of explained cells), the documentation (the model card) and the architecture source for the state-dict weights.

Examples:
    >>> "class CellClassifier" in ARCHITECTURE_SOURCE
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.artefacts.bioimageio import preprocessing_to_affine
from cellsdk.metadata import ModelMetadata
from cellsdk.preprocessing import load_image, prepare_image
from cellsdk.testvectors import TestVectors

__all__ = ["ARCHITECTURE_CALLABLE", "ARCHITECTURE_SOURCE", "CITATIONS", "cover_image", "documentation",
           "not_expressed", "output_descriptions", "test_tensors", "write_tensors"]

#: the callable in :data:`ARCHITECTURE_SOURCE` that builds the network for ``pytorch_state_dict`` weights
ARCHITECTURE_CALLABLE = "CellClassifier"

#: a self-contained module (torch + timm) rebuilding the network cellsdk exports: the timm classifier, returning its
#: logits, pooled features and class activation maps as cellsdk's ONNX and TorchScript weights do
ARCHITECTURE_SOURCE = '''"""A cellsdk cell classifier for bioimage.io's pytorch_state_dict weights (written by cellsdk export).

A timm network returning, in order, the outputs named in ``outputs``: ``logits``, the pooled ``features`` the
logits come from, and ``cams`` (class activation maps: a 1 x 1 convolution of the final feature maps with the
classifier's weights).
"""

import timm
import torch


class CellClassifier(torch.nn.Module):
    def __init__(self, arch, num_classes, outputs=("logits",), timm_kwargs=None):
        super().__init__()
        self.model = timm.create_model(arch, num_classes=num_classes, pretrained=False, **(timm_kwargs or {}))
        self.names = tuple(outputs)
        if "cams" in self.names:
            head = self.model.get_classifier()
            self.cam = torch.nn.Conv2d(head.in_features, head.out_features, 1, bias=False)

    def forward(self, x):
        maps = self.model.forward_features(x)
        features = self.model.forward_head(maps, pre_logits=True)
        logits = self.model.get_classifier()(features)
        if len(self.names) == 1:
            return logits
        values = {"logits": logits, "features": features}
        if "cams" in self.names:
            values["cams"] = self.cam(maps)
        return tuple(values[name] for name in self.names)
'''

#: the data behind the shipped blood-cell model (BloodMNIST is the PBC dataset at 28 px; bloodmnist_128 its crops)
CITATIONS = (
    {"text": "Yang, J. et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image "
             "classification. Scientific Data 10, 41 (2023). (BloodMNIST, CC BY 4.0)",
     "doi": "10.1038/s41597-022-01721-8"},
    {"text": "Acevedo, A. et al. A dataset of microscopic peripheral blood cell images for development of "
             "automatic recognition systems. Data in Brief 30, 105474 (2020). (PBC dataset, CC BY 4.0)",
     "doi": "10.1016/j.dib.2020.105474"},
)


def _per_class(vectors: TestVectors, labels: Sequence[str], count: int) -> list[int]:
    """Indices of up to ``count`` vectors, one per class in label order first, then the rest in order."""
    first: dict[int, int] = {}
    for index, target in enumerate(vectors.targets):
        first.setdefault(int(target), index)
    chosen = [first[c] for c in range(len(labels)) if c in first][:count]
    chosen += [i for i in range(len(vectors.images)) if i not in chosen][:max(0, count - len(chosen))]
    return chosen


def test_tensors(vectors: TestVectors, metadata: ModelMetadata, count: int = 8) -> tuple[np.ndarray, list[int]]:
    """The package's test input: up to ``count`` of the artefact's held-out test images (one per class first),
    prepared as cellsdk prepares them up to the normalisation (crop, resize, stain), as a ``N x 3 x S x S`` uint8
    array in the model's channel order — and which vectors they are.

    Examples:
        >>> tensor, chosen = test_tensors(vectors, metadata)  # doctest: +SKIP
        >>> tensor.dtype, tensor.shape  # doctest: +SKIP
        (dtype('uint8'), (8, 3, 128, 128))
    """
    spec = metadata.preprocessing
    chosen = _per_class(vectors, metadata.labels, count)
    arrays = []
    for index in chosen:
        image = prepare_image(load_image(vectors.images[index], name=vectors.ids[index]), spec)
        array = np.asarray(image.convert("RGB"), np.uint8).transpose(2, 0, 1)
        arrays.append(array[::-1] if spec.color_order == "BGR" else array)
    return np.ascontiguousarray(np.stack(arrays)), chosen


def not_expressed(metadata: ModelMetadata) -> list[str]:
    """What cellsdk does before the model input that the bioimage.io spec has no operation for, one line each.

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> spec = Preprocessing(input_size=64, crop_mode="pixels", crop_value=200)
        >>> meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=spec)
        >>> not_expressed(meta)[0][:40]
        'centre crop: a 200 px square at the cent'
    """
    spec = metadata.preprocessing
    size = spec.input_size
    lines = []
    if spec.scale_range is not None:
        lines.append(f"object-size rescaling: an image whose cells are outside {spec.scale_range[0]:g}..."
                     f"{spec.scale_range[1]:g} px is rescaled into that range first")
    if spec.crop_mode == "pixels":
        lines.append(f"centre crop: a {int(spec.crop_value)} px square at the centre of the raw image (clipped to it)")
    elif spec.crop_mode == "fraction" and spec.crop_value < 1:
        lines.append(f"centre crop: the central {spec.crop_value:g} of the image's short side")
    lines.append(f"resize: to {size} x {size} px ({spec.resize_filter}, Pillow); the input tensor is that image")
    if spec.stain is not None:
        lines.append("Reinhard stain normalisation of the resized image to the training lab's colours "
                     f"(LAB mean {list(spec.stain['mean'])}, std {list(spec.stain['std'])})")
    if spec.pixel_size_um is not None:
        lines.append(f"pixel size: the training images have {spec.pixel_size_um:g} µm per pixel; other pixel sizes "
                     "are rescaled to it")
    return lines


def documentation(metadata: ModelMetadata, *, name: str, weights: Sequence[str], notes: Sequence[str],
                  test_ids: Sequence[str], model_card: str | None = None) -> str:
    """The package's documentation (Markdown): what the model is, its inputs and outputs, the preprocessing (and
    what the spec cannot express), its validation figures, limitations and how to run it.

    Examples:
        >>> documentation(metadata, name="cells", weights=["onnx"], notes=[], test_ids=[])[:8]  # doctest: +SKIP
        '# cells\\n'
    """
    spec = metadata.preprocessing
    gain, offset = preprocessing_to_affine(spec)
    metrics = metadata.reference_metrics
    figures = "\n".join(f"| {key} | {value:.4f} |" for key, value in metrics.items()
                        if isinstance(value, (int, float))) or "| (none recorded) | |"
    guard = metadata.guard or {}
    lines = [
        f"# {name}", "",
        f"A cell classifier ({metadata.arch}, {len(metadata.labels)} classes, {spec.input_size} px input) trained and "
        "converted with cellsdk, an edge-deployment SDK for microscopy cell classifiers.",
        "", f"Classes (the output's channel names, in order): {', '.join(metadata.labels)}.", "",
        f"Training data: {metadata.dataset or 'not recorded'}.", "",
        "## Inputs and outputs", "",
        f"- input `raw`: batch x 3 ({'RGB' if spec.color_order == 'RGB' else 'BGR'}) x {spec.input_size} x "
        f"{spec.input_size}, uint8 pixel values 0..255: the image after the steps below.",
        f"- preprocessing (in the description): `ensure_dtype` float32, then `scale_linear` per channel with gain "
        f"{[round(g, 8) for g in gain]} and offset {[round(o, 6) for o in offset]}, i.e. "
        f"(x / 255 - mean) / std with mean {list(spec.mean)}, std {list(spec.std)}.",
        "- output `probabilities`: batch x classes, the softmax of the model's logits.",
    ]
    if "features" in metadata.outputs:
        lines.append("- output `features`: the pooled features the logits come from (cellsdk's out-of-distribution "
                     "guard scores them).")
    if "cams" in metadata.outputs:
        lines.append("- output `cams`: class activation maps on the final feature grid, in logit units "
                     "(cellsdk's explanations upsample them over the crop).")
    lines += ["", "## Preprocessing the bioimage.io spec cannot express", "",
              "These steps happen before the input tensor. cellsdk does them (`Classifier.load(\"this.zip\")`); other "
              "consumers (ilastik, deepImageJ, QuPath, ImJoy) must feed the tensor they produce:", ""]
    lines += [f"- {line}" for line in not_expressed(metadata)]
    lines += ["", "# Validation", "",
              "Figures of the fp32 model on the held-out split it was checked on (cellsdk-convert's verification "
              "gate; every weights format in this package passed the same gate against the fp32 PyTorch model):",
              "", "| metric | value |", "| --- | --- |", figures, ""]
    if guard:
        lines += ["An out-of-distribution guard (feature-space distances, confidence and input checks) travels in "
                  "the ONNX weights' metadata; cellsdk flags inputs unlike the training data.", ""]
    lines += [f"The test tensors are {len(test_ids)} held-out images: {', '.join(test_ids)}.", "",
              "## Limitations", "",
              "- Verified for the microscopes, stains and magnification of its training data; another lab's cells "
              "need checking (and `cellsdk adapt`) before use.",
              "- Research use; not a diagnostic device.", "",
              "## Weights", "", f"Formats in this package: {', '.join(weights)}.", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Run it", "", "```python", "import cellsdk", "clf = cellsdk.Classifier.load(\"package.zip\")  "
              "# guard, explanations and self-check included", "print(clf.predict(\"cell.jpg\"))", "```", ""]
    if model_card:
        lines += ["## Model card", "", model_card.strip(), ""]
    return "\n".join(lines)


def cover_image(classifier: Any, vectors: TestVectors, chosen: Sequence[int]) -> Any:
    """The cover: the test images explained (class activation maps over each cell) with truth and prediction, in
    a grid of about 2:1, as a PIL image.

    Examples:
        >>> cover_image(classifier, vectors, [0, 1]).size  # doctest: +SKIP
        (372, 224)
    """
    from cellsdk.explain import explain_images, montage

    labels = classifier.labels
    explanations = explain_images(classifier, [vectors.images[i] for i in chosen])
    items = [(explanation, f"truth {labels[vectors.targets[i]]}\npred {explanation.target} "
                           f"{explanation.probability * 100:.0f}%")
             for i, explanation in zip(chosen, explanations, strict=True)]
    columns = max(1, (len(items) + 1) // 2) if len(items) > 2 else len(items)
    return montage([(f"{classifier.metadata.arch}: where it looked (class activation maps)", items)], tile=160,
                   columns=columns)


def write_tensors(staging: Path, raw: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """The outputs' test tensors (every image, .npy) and the sample tensors (the first image: a PNG in, TIFFs out).

    Examples:
        >>> write_tensors(Path("package"), raw, {"probabilities": probabilities})  # doctest: +SKIP
    """
    import tifffile
    from PIL import Image

    Image.fromarray(raw[0].transpose(1, 2, 0)).save(staging / "sample_input.png")
    for name in ("probabilities", "features", "cams"):
        if name in values:
            np.save(staging / f"test_output_{name}.npy", values[name].astype(np.float32))
            tifffile.imwrite(staging / f"sample_output_{name}.tif", values[name][0].astype(np.float32))


def output_descriptions(metadata: ModelMetadata, values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The package's outputs: ``probabilities`` (labels as channel names, softmax of the logits), and ``features``
    and ``cams`` where the model has them, sized from ``values`` (the outputs on the test images).

    Examples:
        >>> from cellsdk.metadata import Preprocessing
        >>> meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(input_size=64))
        >>> [o["id"] for o in output_descriptions(meta, {"probabilities": np.zeros((1, 2))})]
        ['probabilities']
    """
    labels = list(metadata.labels)
    outputs = [{"id": "probabilities", "description": "class probabilities (softmax of the logits)",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": labels}],
                "test_tensor": {"source": "test_output_probabilities.npy"},
                "sample_tensor": {"source": "sample_output_probabilities.tif"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}]}]
    if "features" in values:
        outputs.append({"id": "features", "description": "pooled features (the OOD guard's input)",
                        "axes": [{"type": "batch"}, {"type": "index", "size": int(values["features"].shape[1])}],
                        "test_tensor": {"source": "test_output_features.npy"},
                        "sample_tensor": {"source": "sample_output_features.tif"}})
    if "cams" in values:
        grid = values["cams"].shape[2:]
        scale = metadata.preprocessing.input_size / grid[0]
        outputs.append({"id": "cams", "description": "class activation maps, logit units",
                        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": labels},
                                 {"type": "space", "id": "y", "size": int(grid[0]), "scale": scale},
                                 {"type": "space", "id": "x", "size": int(grid[1]), "scale": scale}],
                        "test_tensor": {"source": "test_output_cams.npy"},
                        "sample_tensor": {"source": "sample_output_cams.tif"}})
    return outputs

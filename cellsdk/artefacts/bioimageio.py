"""bioimage.io model packages: run one with ``Classifier.load(package.zip)`` (torch-free).

A bioimage.io model package (https://bioimage.io) is a zip of a description (``rdf.yaml`` / ``bioimageio.yaml``,
spec 0.5 or 0.4), weights in one or more formats and test tensors. ``cellsdk export --bioimageio`` writes them
(:mod:`cellsdk.converters.bioimageio`) with cellsdk's metadata inside the ONNX weights, so such a package loads
like the ONNX file itself: guard, explanations and self-check included. A package made elsewhere loads where its
description says what cellsdk needs, and is refused with the reason where it does not:

- weights: ONNX (torch-free) or TorchScript;
- one input, axes batch, channel (3), y, x, square, of a fixed size (or its test tensor's, where the size is
  parameterised);
- preprocessing that is a fixed per-channel affine map of the raw pixel values (``ensure_dtype``,
  ``scale_linear``, ``fixed_zero_mean_unit_variance``); per-image statistics (``zero_mean_unit_variance``,
  ``scale_range``) are refused, since cellsdk's preprocessing is fixed;
- one output (the first), axes batch, channel: the channel names are the labels (spec 0.4 has none: pass
  ``labels=``); ``softmax`` post-processing, or none (logits, or probabilities when its test output sums to 1).

The package's own test input is run through the loaded model and compared with its test output: a package that
does not reproduce its own test output here is refused (:class:`~cellsdk.errors.SelfCheckError`).

Examples:
    >>> affine_to_preprocessing([1 / 127.5] * 3, [-1.0] * 3, 128).mean
    (0.5, 0.5, 0.5)
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import sha256_file, user_cache_dir
from cellsdk.errors import BackendNotInstalledError, MetadataError, SelfCheckError, UnsupportedFormatError
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.metrics import softmax

__all__ = ["DESCRIPTION_NAMES", "Package", "affine_to_preprocessing", "check_test_tensors", "is_package",
           "normalise_raw", "open_package", "preprocessing_to_affine"]

#: the names a bioimage.io description file has inside a package (the newer name first)
DESCRIPTION_NAMES = ("bioimageio.yaml", "rdf.yaml")
#: weights formats cellsdk runs, in the order it prefers them (ONNX is torch-free)
_WEIGHTS = (("onnx", ".onnx"), ("torchscript", ".torchscript"))
_AFFINE_OPS = ("ensure_dtype", "scale_linear", "fixed_zero_mean_unit_variance")
#: zip limits: a package with more members or a larger uncompressed size is refused (zip bombs)
_MAX_MEMBERS, _MAX_BYTES = 10_000, 8 << 30


@dataclass(frozen=True)
class Package:
    """A bioimage.io package opened for cellsdk.

    Attributes:
        weights: the weights file cellsdk runs (in the package's extracted folder).
        weights_format: ``onnx`` or ``torchscript``.
        description: the parsed description (a dictionary).
        test_input: the package's test input (the model input before its preprocessing), or None.
        test_output: its expected first output (after post-processing), or None.
        folder: where the package was extracted.
    """

    weights: Path
    weights_format: str
    description: Mapping[str, Any]
    test_input: np.ndarray | None
    test_output: np.ndarray | None
    folder: Path

    @property
    def name(self) -> str:
        """The package's name."""
        return str(self.description.get("name", self.folder.name))

    def derived_metadata(self, source: Path) -> ModelMetadata:
        """The metadata cellsdk derives from the description, for weights without cellsdk's own.

        Raises:
            UnsupportedFormatError: what cellsdk cannot map (see the module's list).

        Examples:
            >>> open_package("colours.zip").derived_metadata(Path("colours.zip")).labels  # doctest: +SKIP
            ('red', 'green', 'blue')
        """
        inputs, outputs = self.description["inputs"], self.description["outputs"]
        return _derive_metadata(source, self.description, inputs[0], outputs[0], self.test_input, self.test_output)


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip with a description, a description file, or a folder with one.

    Examples:
        >>> is_package("model.onnx"), is_package("rdf.yaml")
        (False, True)
    """
    import zipfile

    path = Path(path)
    if path.name in DESCRIPTION_NAMES:
        return True
    if path.is_dir():
        return any((path / name).is_file() for name in DESCRIPTION_NAMES) and not (path / "manifest.json").is_file()
    if path.suffix.lower() == ".zip" and path.is_file():
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name in DESCRIPTION_NAMES for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def preprocessing_to_affine(preprocessing: Preprocessing) -> tuple[list[float], list[float]]:
    """cellsdk's normalisation as one per-channel ``gain`` / ``offset`` on raw 0..255 pixel values (model channel
    order): ``(x / 255 - mean) / std = x * gain + offset``.

    Examples:
        >>> preprocessing_to_affine(Preprocessing(input_size=8))
        ([0.00784313725490196, 0.00784313725490196, 0.00784313725490196], [-1.0, -1.0, -1.0])
    """
    order = [0, 1, 2] if preprocessing.color_order == "RGB" else [2, 1, 0]
    gain = [1.0 / (255.0 * preprocessing.std[c]) for c in order]
    offset = [-preprocessing.mean[c] / preprocessing.std[c] for c in order]
    return gain, offset


def normalise_raw(raw: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """A package's raw ``N x 3 x H x W`` input (0..255, model channel order) normalised as the model expects: the
    spec's ``scale_linear`` with :func:`preprocessing_to_affine`'s gain and offset, in float32.

    Examples:
        >>> normalise_raw(np.full((1, 3, 2, 2), 255, np.uint8), Preprocessing(input_size=2)).max()
        np.float32(1.0)
    """
    gain, offset = preprocessing_to_affine(preprocessing)
    return (raw.astype(np.float32) * np.asarray(gain, np.float32)[None, :, None, None]
            + np.asarray(offset, np.float32)[None, :, None, None]).astype(np.float32)


def affine_to_preprocessing(gain: Sequence[float], offset: Sequence[float], input_size: int) -> Preprocessing:
    """The :class:`Preprocessing` (no crop, RGB) whose normalisation is ``x * gain + offset`` on raw 0..255 pixels.

    Raises:
        MetadataError: a gain that is not positive.

    Examples:
        >>> affine_to_preprocessing([1 / 255] * 3, [0.0] * 3, 64).std
        (1.0, 1.0, 1.0)
    """
    if len(gain) != 3 or len(offset) != 3 or not all(g > 0 and np.isfinite(g) for g in gain):
        raise MetadataError(f"the package's preprocessing (gain {list(gain)}, offset {list(offset)}) is not a "
                            "positive per-channel scaling of 3 channels; cellsdk cannot run it")
    std = tuple(1.0 / (255.0 * g) for g in gain)
    mean = tuple(-o * s for o, s in zip(offset, std, strict=True))
    return Preprocessing(input_size=input_size, mean=mean, std=std)  # type: ignore[arg-type]


def open_package(path: str | os.PathLike) -> Package:
    """Extract (once, into the cache, keyed by the zip's sha256) and read a bioimage.io package.

    Raises:
        UnsupportedFormatError: weights cellsdk cannot run, or a description it cannot map (the reason and what to do).
        MetadataError: an unreadable description or test tensor.
        BackendNotInstalledError: PyYAML is missing (``pip install 'cellsdk[bioimageio]'``).

    Examples:
        >>> open_package("cells.zip").weights.name  # doctest: +SKIP
        'model.onnx'
    """
    path = Path(path)
    folder = _extract(path) if path.is_file() and path.suffix.lower() == ".zip" else (
        path.parent if path.is_file() else path)
    description_file = next((folder / n for n in DESCRIPTION_NAMES if (folder / n).is_file()), None)
    if description_file is None:
        raise UnsupportedFormatError(f"{path}: no {' or '.join(DESCRIPTION_NAMES)} in it; not a bioimage.io package")
    description = _read_yaml(description_file)
    if description.get("type") != "model":
        raise UnsupportedFormatError(f"{path}: a bioimage.io {description.get('type')!r} description, not a model")
    weights_format, weights = _weights(path, description, folder)
    inputs, outputs = description.get("inputs") or [], description.get("outputs") or []
    if len(inputs) != 1 or not outputs:
        raise UnsupportedFormatError(f"{path}: {len(inputs)} inputs and {len(outputs)} outputs; cellsdk runs models "
                                     "with one image input and a class output")
    test_input = _tensor(path, folder, inputs[0], description.get("test_inputs"))
    test_output = _tensor(path, folder, outputs[0], description.get("test_outputs"))
    return Package(weights, weights_format, description, test_input, test_output, folder)


def check_test_tensors(package: Package, run: Any, metadata: ModelMetadata) -> float | None:
    """Run the package's own test input through ``run`` (model inputs -> the first output's raw values) with the
    package's preprocessing and compare with its test output; the largest absolute difference, None without tensors.

    Raises:
        SelfCheckError: the model does not reproduce its own test output here.

    Examples:
        >>> opened = open_artefact("colours.zip")  # doctest: +SKIP
        >>> check_test_tensors(open_package("colours.zip"), opened.backend.run, opened.metadata)  # doctest: +SKIP
        1.2e-07
    """
    if package.test_input is None or package.test_output is None:
        return None
    raw = package.test_input.astype(np.float32)
    if raw.ndim != 4 or raw.shape[1] != 3:
        return None
    batch = normalise_raw(raw, metadata.preprocessing)
    values = np.concatenate([np.asarray(run(batch[i:i + 1]), np.float64) for i in range(len(batch))])  # any batch
    if metadata.output == "logits" and _declares_softmax(package.description):
        values = softmax(values)
    expected = np.asarray(package.test_output, np.float64).reshape(values.shape) if package.test_output.size == \
        values.size else None
    if expected is None:
        raise SelfCheckError(f"{package.name}: its test output has shape {package.test_output.shape}, the model gives "
                             f"{values.shape}; the package is inconsistent")
    difference = float(np.max(np.abs(values - expected)))
    tolerance = 1e-3 + 1e-2 * float(np.max(np.abs(expected)))
    ranked = np.sort(expected, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 2 * tolerance if ranked.shape[-1] > 1 else np.ones(len(expected), bool)
    swapped = (values.argmax(axis=1) != expected.argmax(axis=1)) & clear  # a near tie may go either way
    if difference > tolerance or swapped.any():
        raise SelfCheckError(f"{package.name}: its test input gives outputs up to {difference:.3g} away from its test "
                             f"output here (tolerance {tolerance:.3g}); it does not run correctly on this machine")
    return difference


# --- internals ------------------------------------------------------------------------------------------------


def _extract(path: Path) -> Path:
    import zipfile

    target = user_cache_dir() / "bioimageio" / sha256_file(path)[:24]
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > _MAX_MEMBERS or sum(m.file_size for m in members) > _MAX_BYTES:
                raise UnsupportedFormatError(f"{path}: the zip is too large to be a model package "
                                             f"({len(members)} members)")
            for member in members:
                name = Path(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise UnsupportedFormatError(f"{path}: member {member.filename!r} points outside the package")
            archive.extractall(staging)
        (staging / ".complete").write_text(str(path))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except zipfile.BadZipFile as err:
        raise UnsupportedFormatError(f"{path}: not a readable zip ({err}); download the package again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise BackendNotInstalledError("reading a bioimage.io description needs PyYAML: "
                                       "pip install 'cellsdk[bioimageio]'") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise MetadataError(f"{path}: unreadable bioimage.io description ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: the bioimage.io description is not a mapping")
    return data


def _source(entry: Any) -> str | None:
    if isinstance(entry, Mapping):
        entry = entry.get("source")
    return entry if isinstance(entry, str) and entry else None


def _local(path: Path, folder: Path, name: str) -> Path:
    if "://" in name:
        raise UnsupportedFormatError(f"{path}: {name} is a remote file; download the package as a zip "
                                     "(bioimageio package ...) and load that")
    local = (folder / name).resolve()
    if folder.resolve() not in local.parents or not local.is_file():
        raise MetadataError(f"{path}: the description names {name}, which is not in the package")
    return local


def _weights(path: Path, description: Mapping[str, Any], folder: Path) -> tuple[str, Path]:
    weights = description.get("weights") or {}
    for fmt, _suffix in _WEIGHTS:
        name = _source(weights.get(fmt))
        if name:
            return fmt, _local(path, folder, name)
    raise UnsupportedFormatError(f"{path}: its weights are {', '.join(weights) or 'none'}; cellsdk runs ONNX or "
                                 "TorchScript weights (convert the model to ONNX and add it to the package)")


def _tensor(path: Path, folder: Path, descr: Mapping[str, Any], listed: Any) -> np.ndarray | None:
    """The tensor's test file (spec 0.5: ``test_tensor``; 0.4: the description's ``test_inputs`` / ``test_outputs``)."""
    name = _source(descr.get("test_tensor")) or (listed[0] if isinstance(listed, list) and listed else None)
    if not isinstance(name, str) or not name.endswith(".npy"):
        return None
    try:
        return np.load(io.BytesIO(_local(path, folder, name).read_bytes()), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise MetadataError(f"{path}: test tensor {name} is unreadable ({err})") from None


def _axes(descr: Mapping[str, Any]) -> list[dict[str, Any]]:
    axes = descr.get("axes")
    if isinstance(axes, str):  # spec 0.4: "bcyx"
        names = {"b": "batch", "c": "channel", "y": "space", "x": "space"}
        return [{"type": names.get(letter, letter), "id": letter} for letter in axes]
    return [dict(a) for a in axes] if isinstance(axes, list) else []


def _size(axis: Mapping[str, Any], fallback: int | None) -> int | None:
    size = axis.get("size")
    if isinstance(size, int):
        return size
    return fallback


def _derive_metadata(path: Path, description: Mapping[str, Any], inp: Mapping[str, Any], out: Mapping[str, Any],
                     test_input: np.ndarray | None, test_output: np.ndarray | None) -> ModelMetadata:
    axes = _axes(inp)
    kinds = [a.get("type") for a in axes]
    if kinds != ["batch", "channel", "space", "space"]:
        raise UnsupportedFormatError(f"{path}: input axes {kinds}; cellsdk runs batch, channel, y, x image inputs")
    channels = axes[1].get("channel_names")
    shape = test_input.shape if test_input is not None and test_input.ndim == 4 else (None,) * 4
    count = len(channels) if isinstance(channels, list) else shape[1]
    if count != 3:
        raise UnsupportedFormatError(f"{path}: the input has {count if count is not None else 'an unknown number of'} "
                                     "channels; cellsdk runs RGB (3-channel) models")
    height, width = _size(axes[2], shape[2]), _size(axes[3], shape[3])
    if height is None or height != width:
        raise UnsupportedFormatError(f"{path}: input size {height} x {width}; cellsdk runs square inputs of a fixed "
                                     "size (a test tensor gives it)")
    gain, offset = _compose(path, inp, height)
    out_axes = _axes(out)
    if [a.get("type") for a in out_axes] != ["batch", "channel"]:
        raise UnsupportedFormatError(f"{path}: output axes {[a.get('type') for a in out_axes]}; cellsdk runs "
                                     "classifiers (batch, channel)")
    labels = out_axes[1].get("channel_names")
    if not isinstance(labels, list) or not labels:
        count = test_output.shape[-1] if test_output is not None else 0
        labels = [f"class_{i}" for i in range(count)]
        if not labels:
            raise MetadataError(f"{path}: the output names no classes; pass labels=[...]")
    post = [p.get("id") or p.get("name") for p in out.get("postprocessing") or []]
    if any(p not in ("softmax",) for p in post):
        raise UnsupportedFormatError(f"{path}: output post-processing {post}; cellsdk runs classifiers whose output "
                                     "is logits (softmax) or probabilities")
    output = "logits"
    if not post and test_output is not None and np.all(test_output >= 0) and np.allclose(
            test_output.reshape(-1, len(labels)).sum(axis=1), 1.0, atol=1e-3):
        output = "probabilities"
    return ModelMetadata(labels=tuple(str(label) for label in labels),
                         arch=f"bioimage.io: {description.get('name', path.stem)}",
                         preprocessing=affine_to_preprocessing(gain, offset, height), output=output,
                         dataset=str((description.get("training_data") or {}).get("id") or "") or None)


def _per_channel(value: Any, name: str, path: Path) -> np.ndarray:
    array = np.asarray(value if value is not None else 0.0, np.float64).reshape(-1)
    if array.size == 1:
        return np.repeat(array, 3)
    if array.size != 3:
        raise UnsupportedFormatError(f"{path}: preprocessing {name} has {array.size} values; cellsdk runs per-image "
                                     "or per-channel values")
    return array


def _compose(path: Path, inp: Mapping[str, Any], size: int) -> tuple[list[float], list[float]]:
    """The input's preprocessing as one affine map on raw 0..255 pixel values."""
    gain, offset = np.ones(3), np.zeros(3)
    data = inp.get("data") or {}
    value_range = data.get("range") if isinstance(data, Mapping) else None
    if isinstance(value_range, list) and len(value_range) == 2 and value_range[1] == 1 and str(
            data.get("type", "")).startswith("float"):
        gain = gain / 255.0  # the model takes values in [0, 1]: raw pixels are scaled first
    for step in inp.get("preprocessing") or []:
        op, kwargs = step.get("id") or step.get("name"), step.get("kwargs") or {}
        if op == "ensure_dtype":
            continue
        if op == "scale_linear":
            g, o = _per_channel(kwargs.get("gain", 1.0), "gain", path), _per_channel(kwargs.get("offset", 0.0),
                                                                                      "offset", path)
            gain, offset = gain * g, offset * g + o
        elif op == "fixed_zero_mean_unit_variance" or (op == "zero_mean_unit_variance"
                                                       and kwargs.get("mode") == "fixed"):
            mean = _per_channel(kwargs.get("mean"), "mean", path)
            std = _per_channel(kwargs.get("std"), "std", path)
            gain, offset = gain / std, (offset - mean) / std
        else:
            raise UnsupportedFormatError(
                f"{path}: input preprocessing {op!r} is not a fixed scaling; cellsdk runs {', '.join(_AFFINE_OPS)} "
                "(per-image statistics such as zero_mean_unit_variance or scale_range are not supported)")
    return [float(v) for v in gain], [float(v) for v in offset]


def _declares_softmax(description: Mapping[str, Any]) -> bool:
    outputs = description.get("outputs") or [{}]
    return any((p.get("id") or p.get("name")) == "softmax" for p in outputs[0].get("postprocessing") or [])

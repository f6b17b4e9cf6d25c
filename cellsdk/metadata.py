"""The one metadata schema that travels with a cellsdk model.

A :class:`ModelMetadata` is written beside the weights of a training checkpoint
and into the native metadata slot of every converted artefact, always as one
JSON document stored under the key :data:`METADATA_KEY` (``"cellsdk"``). It
says what the model predicts (ordered labels), how a raw image becomes the
model input (:class:`Preprocessing`), and where the model came from
(provenance).

Examples:
    >>> from cellsdk.metadata import ModelMetadata, Preprocessing
    >>> meta = ModelMetadata(labels=("a", "b"), arch="resnet18",
    ...                      preprocessing=Preprocessing(input_size=64))
    >>> ModelMetadata.from_json(meta.to_json()) == meta
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cellsdk._io import parse_json
from cellsdk._version import __version__
from cellsdk.errors import MetadataError

__all__ = [
    "COLOR_ORDERS",
    "CROP_MODES",
    "METADATA_KEY",
    "OUTPUTS",
    "PRECISIONS",
    "RESIZE_FILTERS",
    "SCHEMA_VERSION",
    "ModelMetadata",
    "Preprocessing",
]

#: The key under which the JSON document is stored in every artefact's slot.
METADATA_KEY = "cellsdk"
#: The schema version this cellsdk writes and the newest it reads (1: the first; 2: adds ``cpu_verification``;
#: 3: adds ``outputs`` and ``guard``; 4: adds ``gpu_verification``; 5: adds ``test_vectors``).
SCHEMA_VERSION = 5

RESIZE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_MODES = ("none", "fraction", "pixels")
COLOR_ORDERS = ("RGB", "BGR")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int6", "int4")
OUTPUTS = ("logits", "probabilities")
_MAX_INPUT_SIZE = 4096


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes the model's input tensor.

    The steps, in order: decode to RGB, centre crop (``crop_mode``), resize to
    ``input_size`` x ``input_size`` with ``resize_filter``, scale to [0, 1],
    normalise with ``mean``/``std``, reorder channels to ``color_order``,
    and lay out as ``NCHW`` float32.

    Attributes:
        input_size: side of the square model input, in pixels.
        crop_mode: ``"none"``; ``"fraction"`` keeps the central ``crop_value``
            fraction of the short side; ``"pixels"`` keeps a centre square of
            ``crop_value`` pixels of the raw image (clipped to the image).
        crop_value: the fraction (0 < f <= 1) or pixel size of the crop.
        resize_filter: Pillow filter name used for the resize.
        mean: per-channel mean, in [0, 1] units, RGB order.
        std: per-channel standard deviation, in [0, 1] units, RGB order.
        color_order: channel order of the model input, ``"RGB"`` or ``"BGR"``.
        scale_range: the training images' typical object size in raw pixels ``(low, high)``; an image outside
            it is rescaled into it before the crop (see :mod:`cellsdk.normalise`). None: no scale step.
        pixel_size_um: the training images' pixel size in micrometres, where known: an input whose pixel size
            is given is rescaled to it.
        stain: Reinhard stain normalisation of the prepared image to the training lab's colours
            (``{"method": "reinhard", "mean": [L, a, b], "std": [...]}``), or None.

    Examples:
        >>> Preprocessing(input_size=128, crop_mode="pixels", crop_value=200).describe()
        'centre crop 200 px -> resize 128x128 (bilinear) -> RGB, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)'
    """

    input_size: int
    crop_mode: str = "none"
    crop_value: float = 1.0
    resize_filter: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color_order: str = "RGB"
    scale_range: tuple[float, float] | None = None
    pixel_size_um: float | None = None
    stain: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.scale_range is not None:
            object.__setattr__(self, "scale_range", tuple(self.scale_range))
        if self.stain is not None:
            object.__setattr__(self, "stain", _FrozenDict(self.stain))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MetadataError` if any field is out of range.

        Examples:
            >>> Preprocessing(input_size=128).validate() is None
            True
            >>> Preprocessing(input_size=0)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.errors.MetadataError: preprocessing.input_size 0 is out of range: use 1...
        """
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool):
            raise MetadataError(f"preprocessing.input_size must be an integer, got {self.input_size!r}")
        if not 1 <= self.input_size <= _MAX_INPUT_SIZE:
            raise MetadataError(
                f"preprocessing.input_size {self.input_size} is out of range: use 1..{_MAX_INPUT_SIZE}"
            )
        if self.crop_mode not in CROP_MODES:
            raise MetadataError(f"preprocessing.crop_mode {self.crop_mode!r} is unknown: use one of {CROP_MODES}")
        value = self.crop_value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MetadataError(f"preprocessing.crop_value must be a finite number, got {value!r}")
        if self.crop_mode == "fraction" and not 0.0 < value <= 1.0:
            raise MetadataError(f"preprocessing.crop_value {value} is not a fraction: use 0 < fraction <= 1")
        if self.crop_mode == "pixels" and (value < 1 or value != int(value)):
            raise MetadataError(f"preprocessing.crop_value {value} is not a pixel size: use a whole number >= 1")
        if self.resize_filter not in RESIZE_FILTERS:
            raise MetadataError(
                f"preprocessing.resize_filter {self.resize_filter!r} is unknown: use one of {RESIZE_FILTERS}"
            )
        if self.color_order not in COLOR_ORDERS:
            raise MetadataError(f"preprocessing.color_order {self.color_order!r} is unknown: use RGB or BGR")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise MetadataError(f"preprocessing.{name} must be three finite numbers, got {values!r}")
        if any(v <= 0 for v in self.std):
            raise MetadataError(f"preprocessing.std must be positive, got {self.std!r}")
        if self.scale_range is not None and not (
                len(self.scale_range) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                   for v in self.scale_range)
                and 0 < self.scale_range[0] <= self.scale_range[1]):
            raise MetadataError(f"preprocessing.scale_range must be (low, high) with 0 < low <= high, "
                                f"got {self.scale_range!r}")
        if self.pixel_size_um is not None and not (
                isinstance(self.pixel_size_um, (int, float)) and math.isfinite(self.pixel_size_um)
                and self.pixel_size_um > 0):
            raise MetadataError(f"preprocessing.pixel_size_um must be a positive number, got {self.pixel_size_um!r}")
        if self.stain is not None:
            stain = self.stain
            if stain.get("method") != "reinhard" or not all(
                    isinstance(stain.get(k), (list, tuple)) and len(stain[k]) == 3
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in stain[k]) for k in ("mean", "std")
            ) or min(stain["std"]) <= 0:
                raise MetadataError("preprocessing.stain must be {method: reinhard, mean: [3 numbers], "
                                    "std: [3 positive numbers]}")

    def describe(self) -> str:
        """A one-line human-readable summary of the recipe.

        Examples:
            >>> Preprocessing(input_size=128, crop_mode="pixels", crop_value=200).describe()[:40]
            'centre crop 200 px -> resize 128x128 (bi'
        """
        if self.crop_mode == "pixels":
            crop = f"centre crop {int(self.crop_value)} px -> "
        elif self.crop_mode == "fraction" and self.crop_value < 1.0:
            crop = f"centre crop {self.crop_value:g} of short side -> "
        else:
            crop = ""
        size = self.input_size
        scale = ""
        if self.scale_range is not None:
            scale = f"scale cells into object size {self.scale_range[0]:g}..{self.scale_range[1]:g} px -> "
        stain = " -> Reinhard stain normalisation" if self.stain is not None else ""
        return (
            f"{scale}{crop}resize {size}x{size} ({self.resize_filter}){stain} -> {self.color_order}, "
            f"mean {self.mean}, std {self.std}"
        )

    def without_crop(self) -> Preprocessing:
        """The same recipe with the crop step removed.

        Used for data whose images were already cropped by this recipe (for
        example ``bloodmnist_128``, cut 200 px from the raw originals): they are
        at the training scale, so the scale step goes too; stain normalisation stays.

        Examples:
            >>> Preprocessing(input_size=128, crop_mode="pixels", crop_value=200).without_crop().crop_mode
            'none'
        """
        return dataclasses.replace(self, crop_mode="none", crop_value=1.0, scale_range=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        Examples:
            >>> Preprocessing(input_size=64).to_dict()["mean"]
            [0.5, 0.5, 0.5]
        """
        out = dataclasses.asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        for name in ("scale_range", "pixel_size_um", "stain"):  # optional steps: absent, not null, when unused
            if out[name] is None:
                del out[name]
        if self.scale_range is not None:
            out["scale_range"] = list(self.scale_range)
        if self.stain is not None:
            out["stain"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.stain.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Build from :meth:`to_dict` output, raising :class:`MetadataError` on bad input.

        Examples:
            >>> spec = Preprocessing(input_size=64)
            >>> Preprocessing.from_dict(spec.to_dict()) == spec
            True
        """
        return _build(cls, data, "preprocessing")


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a model needs to be run and trusted, in one versioned document.

    Attributes:
        labels: class names, in output order.
        arch: the network architecture (a timm model name).
        preprocessing: how a raw image becomes the model input.
        output: what the model returns: ``logits`` (the runtime applies softmax) or ``probabilities``.
        precision: numeric precision of the weights (``fp32``, ``fp16``, ``int8`` ...).
        quantization: the quantization recipe, or ``None`` for unquantized models.
        source_checkpoint_sha256: sha256 of the checkpoint the model came from.
        calibration_sha256: hash of the list of calibration images, if any.
        reference_metrics: the fp32 model's metrics (accuracy, macro_f1, ...).
        dataset: a short description of the training data.
        training: the training recipe (a JSON-ready dictionary).
        cpu_verification: one record per CPU class the artefact was verified on (``target``,
            ``cpu_class``, ``features``, ``method``, ``images``, ``status``, the gate's figures); see
            :mod:`cellsdk.platform.cpu`. Empty for checkpoints and for artefacts written before schema 2.
        outputs: the model's outputs in order: ``logits`` first, then e.g. ``features`` (the pooled
            features the OOD guard reads). Before schema 3 always ``("logits",)``.
        guard: the out-of-distribution guard (score statistics, thresholds, input checks, validation
            figures; see :mod:`cellsdk.guard`), or None for models without one.
        gpu_verification: one record per GPU model and device the artefact was verified on with
            ``cellsdk verify --device cuda|tensorrt`` (``target``, ``gpu``, ``driver``, ``runtime``, ``images``,
            ``status``, the gate's figures). Empty before schema 4 and until a GPU check ran.
        test_vectors: held-out images and the fp32 reference's outputs on them, with the gate's thresholds, so
            the artefact can check itself on any machine (:mod:`cellsdk.testvectors`, :mod:`cellsdk.artefacts.selfcheck`);
            None before schema 5, for checkpoints, and for artefacts not written by cellsdk-convert.
        created: ISO 8601 UTC time of creation.
        cellsdk_version: the cellsdk version that wrote the document.
        schema_version: version of this schema.

    Examples:
        >>> meta = ModelMetadata(labels=("a", "b"), arch="resnet18",
        ...                      preprocessing=Preprocessing(input_size=64))
        >>> meta.num_classes
        2
    """

    labels: tuple[str, ...]
    arch: str
    preprocessing: Preprocessing
    output: str = "logits"
    precision: str = "fp32"
    quantization: dict[str, Any] | None = None
    source_checkpoint_sha256: str | None = None
    calibration_sha256: str | None = None
    reference_metrics: dict[str, float] = field(default_factory=dict)
    dataset: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    cpu_verification: tuple[dict[str, Any], ...] = ()
    outputs: tuple[str, ...] = ("logits",)
    guard: dict[str, Any] | None = None
    gpu_verification: tuple[dict[str, Any], ...] = ()
    test_vectors: dict[str, Any] | None = None
    created: str | None = None
    cellsdk_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.labels, (list, tuple)):
            object.__setattr__(self, "labels", tuple(self.labels))
        if isinstance(self.cpu_verification, list):
            object.__setattr__(self, "cpu_verification", tuple(self.cpu_verification))
        if isinstance(self.gpu_verification, list):
            object.__setattr__(self, "gpu_verification", tuple(self.gpu_verification))
        if isinstance(self.outputs, list):
            object.__setattr__(self, "outputs", tuple(self.outputs))
        if isinstance(self.preprocessing, Mapping):
            object.__setattr__(self, "preprocessing", Preprocessing.from_dict(self.preprocessing))
        self.validate()

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(labels)``."""
        return len(self.labels)

    def validate(self) -> None:
        """Raise :class:`MetadataError` naming the first inconsistent field.

        Examples:
            >>> ModelMetadata(labels=("a", "a"), arch="x", preprocessing=Preprocessing(8))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.errors.MetadataError: labels must be unique, repeated: a
        """
        if not isinstance(self.schema_version, int) or self.schema_version < 1:
            raise MetadataError(f"schema_version must be a positive integer, got {self.schema_version!r}")
        if self.schema_version > SCHEMA_VERSION:
            raise MetadataError(
                f"metadata schema {self.schema_version} is newer than this cellsdk reads "
                f"({SCHEMA_VERSION}): upgrade with pip install -U cellsdk"
            )
        if not isinstance(self.labels, tuple) or len(self.labels) < 2:
            raise MetadataError(f"labels must list at least two classes, got {self.labels!r}")
        for label in self.labels:
            if not isinstance(label, str) or not label.strip():
                raise MetadataError(f"labels must be non-empty strings, got {label!r}")
        duplicates = sorted({label for label in self.labels if self.labels.count(label) > 1})
        if duplicates:
            raise MetadataError(f"labels must be unique, repeated: {', '.join(duplicates)}")
        if not isinstance(self.arch, str) or not self.arch:
            raise MetadataError(f"arch must be a non-empty string, got {self.arch!r}")
        if not isinstance(self.preprocessing, Preprocessing):
            raise MetadataError(
                f"preprocessing must be a JSON object (a Preprocessing record), got {type(self.preprocessing).__name__}"
            )
        if self.output not in OUTPUTS:
            raise MetadataError(f"output {self.output!r} is unknown: use logits or probabilities")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision {self.precision!r} is unknown: use one of {PRECISIONS}")
        if self.quantization is not None and not isinstance(self.quantization, dict):
            raise MetadataError("quantization must be a dictionary or null")
        for name in ("source_checkpoint_sha256", "calibration_sha256"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value)
            ):
                raise MetadataError(f"{name} must be 64 lowercase hex digits, got {value!r}")
        if not isinstance(self.reference_metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.reference_metrics.values()
        ):
            raise MetadataError("reference_metrics must map names to numbers")
        if not isinstance(self.training, dict):
            raise MetadataError("training must be a dictionary")
        if not isinstance(self.cpu_verification, tuple) or not all(
            isinstance(r, dict) and isinstance(r.get("cpu_class"), str) and isinstance(r.get("status"), str)
            for r in self.cpu_verification
        ):
            raise MetadataError("cpu_verification must list records with a 'cpu_class' and a 'status'")
        if not isinstance(self.gpu_verification, tuple) or not all(
            isinstance(r, dict) and isinstance(r.get("gpu"), str) and isinstance(r.get("target"), str)
            and isinstance(r.get("status"), str) for r in self.gpu_verification
        ):
            raise MetadataError("gpu_verification must list records with a 'target', a 'gpu' and a 'status'")
        if not isinstance(self.outputs, tuple) or not self.outputs or self.outputs[0] != "logits" \
                or not all(isinstance(o, str) and o for o in self.outputs) or len(set(self.outputs)) != len(self.outputs):
            raise MetadataError(f"outputs must name the model's outputs, logits first, got {self.outputs!r}")
        from cellsdk.testvectors import validate_record

        validate_record(self.test_vectors)
        if self.guard is not None:
            if not isinstance(self.guard, dict) or not isinstance(self.guard.get("score"), dict) \
                    or not isinstance(self.guard.get("threshold"), (int, float)):
                raise MetadataError("guard must be a record with a 'score' and a 'threshold', or null")
            if self.guard["score"].get("name") not in ("msp", "energy") and "features" not in self.outputs:
                raise MetadataError("guard reads the model's features but outputs does not list 'features'")

    def replace(self, **changes: Any) -> ModelMetadata:
        """A copy with some fields changed, validated again.

        Examples:
            >>> meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8))
            >>> meta.replace(precision="int8").precision
            'int8'
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        Examples:
            >>> ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8)).to_dict()["labels"]
            ['a', 'b']
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["labels"] = list(self.labels)
        out["preprocessing"] = self.preprocessing.to_dict()
        out["cpu_verification"] = list(self.cpu_verification)
        out["gpu_verification"] = list(self.gpu_verification)
        out["outputs"] = list(self.outputs)
        return out

    def to_json(self, indent: int | None = None) -> str:
        """Serialise to the JSON document stored under :data:`METADATA_KEY`.

        Examples:
            >>> meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8))
            >>> ModelMetadata.from_json(meta.to_json()) == meta
            True
        """
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Build from :meth:`to_dict` output, raising :class:`MetadataError` on bad input.

        Examples:
            >>> ModelMetadata.from_dict({"labels": ["a", "b"], "arch": "x", "preprocessing": {"input_size": 8}}).num_classes
            2
        """
        if not isinstance(data, Mapping):
            raise MetadataError(f"metadata must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise MetadataError(
                f"metadata schema {version} is newer than this cellsdk reads "
                f"({SCHEMA_VERSION}): upgrade with pip install -U cellsdk"
            )
        return _build(cls, data, "metadata")

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        """Parse the JSON document written by :meth:`to_json`.

        Examples:
            >>> ModelMetadata.from_json("[]")
            Traceback (most recent call last):
            ...
            cellsdk.errors.MetadataError: metadata must be a JSON object, got list
        """
        try:
            data = parse_json(text)
        except ValueError as err:  # also invalid UTF-8 and absurd nesting
            raise MetadataError(f"metadata is not valid JSON ({err})") from None
        return cls.from_dict(data)


class _FrozenDict(dict):
    """A read-only, hashable dict (a frozen dataclass field that holds a small JSON object)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True, default=list))

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("metadata records are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]


def _build(cls: type, data: Mapping[str, Any], what: str) -> Any:
    """Construct a dataclass from a mapping, turning every mismatch into MetadataError."""
    if not isinstance(data, Mapping):
        raise MetadataError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MetadataError(f"{what} has unknown fields: {', '.join(unknown)}")
    required = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise MetadataError(f"{what} is missing required fields: {', '.join(missing)}")
    try:
        return cls(**dict(data))
    except MetadataError:
        raise
    except (TypeError, ValueError) as err:
        raise MetadataError(f"{what} is malformed: {err}") from None

"""The converter registry and the job every converter works from.

A converter is one module per format (``converters/onnx.py`` ...) that
registers itself with :func:`register_converter` and writes one artefact for
one precision into a path it is given. The shared :class:`ExportJob` holds
the fp32 PyTorch model, the metadata, the calibration set and a scratch
folder for intermediates (the fp32 ONNX export is made once and reused).

Examples:
    >>> from cellsdk.converters import converter_names
    >>> converter_names()
    ('onnx', 'torchscript', 'openvino', 'coreml', 'litert', 'executorch')
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cellsdk.errors import BackendNotInstalledError, ConfigError
from cellsdk.metadata import ModelMetadata

__all__ = ["Converter", "ExportJob", "Refused", "converter_names", "first_line", "get_converter", "plain_tensor_copy",
           "register_converter"]

_CONVERTERS: dict[str, type[Converter]] = {}


@dataclass
class ExportJob:
    """What every converter of one conversion shares.

    Attributes:
        model: the fp32 PyTorch model, in eval mode.
        metadata: the checkpoint's metadata (converters set precision and quantization).
        workdir: scratch folder for intermediates, removed after the conversion.
        dynamic_batch: make the batch dimension dynamic (else it is 1).
        calibration: the calibration set, for int8 (None without one).
        int8_recipe: ``portable`` or ``vnni`` (see :mod:`cellsdk.converters.int8`).
        test_vectors: the held-out images and fp32 outputs every artefact carries, trimmed to its size
            (:mod:`cellsdk.converters.testvectors`); None without them.
        artefact_vectors: each artefact's own vectors (trimmed, with its own OOD scores on them), by file name.
    """

    model: Any
    metadata: ModelMetadata
    workdir: Path
    dynamic_batch: bool = True
    calibration: Any = None
    int8_recipe: str = "portable"
    test_vectors: Any = None
    artefact_vectors: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def exported(self) -> Any:
        """The module every format exports: the model, returning its metadata's ``outputs`` in order when there
        are more than logits (``features``: the OOD guard's input; ``cams``: class activation maps; see
        :func:`cellsdk.converters.heads.with_outputs`)."""
        if tuple(self.metadata.outputs) == ("logits",):
            return self.model
        from cellsdk.converters.heads import with_outputs

        outputs = tuple(self.metadata.outputs)
        return self.cached(f"with-outputs-{'-'.join(outputs)}",
                           lambda: with_outputs(self.model, outputs, self.input_size))

    @property
    def module_prefix(self) -> str:
        """What :attr:`exported` puts before the model's own module names (``model.`` when wrapped)."""
        return "model." if self.exported is not self.model else ""

    @property
    def input_size(self) -> int:
        """The model's input side in pixels."""
        return self.metadata.preprocessing.input_size

    def example(self, batch: int = 1) -> Any:
        """A deterministic example input for tracing (values do not matter, shapes do).

        Examples:
            >>> job.example().shape  # doctest: +SKIP
            torch.Size([2, 3, 128, 128])
        """
        import torch

        size = self.input_size
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per job, e.g. the fp32 ONNX file several formats start from.

        Examples:
            >>> fp32 = job.cached("fp32-onnx", lambda: export_fp32_onnx(job))  # doctest: +SKIP
        """
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def metadata_for(self, precision: str, quantization: dict[str, Any] | None = None) -> ModelMetadata:
        """The artefact's metadata: the checkpoint's, with its precision and recipe.

        Examples:
            >>> job.metadata_for("int8", {"recipe": "portable"}).precision  # doctest: +SKIP
            'int8'
        """
        calibration = self.calibration.sha256 if self.calibration is not None and quantization else None
        return self.metadata.replace(precision=precision, quantization=quantization, calibration_sha256=calibration)

    def require_calibration(self, fmt: str) -> Any:
        """The calibration set, or a clear error for int8 without one.

        Examples:
            >>> job.require_calibration()  # doctest: +SKIP
            Traceback (most recent call last):
            ...
            cellsdk.errors.ConfigError: int8 needs calibration images: pass --calib DATA
        """
        if self.calibration is None:
            raise ConfigError(f"{fmt} int8 needs calibration images: pass --calib DATA (real images, train split)")
        return self.calibration


class Refused(Exception):
    """A converter cannot write this artefact for this model, for a known reason: the artefact is ``skipped``
    with that reason (one line saying what to use instead), and the conversion goes on."""


class Converter(abc.ABC):
    """One output format.

    Class attributes (set by :func:`register_converter`):
        name: the format name (``onnx`` ...).
        suffix: the artefact's suffix.
        precisions: the precisions this format can write.
        packages: import names it needs; ``install`` says how to get them.
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    packages: ClassVar[tuple[str, ...]]
    install: ClassVar[str]
    #: the precision written when no quantization is asked for
    baseline: ClassVar[str] = "fp32"

    @classmethod
    def missing_packages(cls) -> list[str]:
        """The packages this converter needs that are not installed.

        Examples:
            >>> get_converter("onnx").missing_packages()
            []
        """
        return [p for p in cls.packages if importlib.util.find_spec(p) is None]

    @classmethod
    def check_installed(cls) -> None:
        """Raise BackendNotInstalledError naming the extra if a package is missing.

        Examples:
            >>> get_converter("onnx").check_installed() is None
            True
        """
        missing = cls.missing_packages()
        if missing:
            raise BackendNotInstalledError(
                f"converting to {cls.name} needs {', '.join(missing)}, which is not installed: {cls.install}"
            )

    def file_name(self, precision: str) -> str:
        """The artefact's file name, e.g. ``model.int8.onnx``.

        Examples:
            >>> get_converter("openvino").file_name("fp16")
            'model.fp16.xml'
        """
        return f"model.{precision}{self.suffix}"

    @abc.abstractmethod
    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        """Write the artefact for ``precision`` at ``out`` (metadata in its slot).

        Returns:
            The quantization recipe actually used (empty for float precisions), and any
            ``runtime_options`` the artefact was verified with, under that key.

        Examples:
            >>> get_converter("onnx").convert(job, "int8", Path("out/model.int8.onnx"))  # doctest: +SKIP
        """

    @abc.abstractmethod
    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        """Replace the cellsdk metadata in the artefact at ``path`` (the model itself unchanged, written atomically).

        Used after verification, to record the CPU classes the artefact was verified on.

        Examples:
            >>> get_converter("onnx").write_metadata(Path("out/model.int8.onnx"), metadata)  # doctest: +SKIP
        """

    def verify_options(self, precision: str) -> dict[str, Any]:
        """Options for ``Classifier.load`` when verifying (and running) this artefact.

        Examples:
            >>> get_converter("openvino").verify_options("fp32")
            {'precision': 'f32'}
        """
        return {}


def register_converter(name: str, *, suffix: str, precisions: tuple[str, ...], packages: tuple[str, ...],
                       install: str, baseline: str = "fp32") -> Callable[[type[Converter]], type[Converter]]:
    """Class decorator registering a converter for format ``name``.

    Examples:
        >>> get_converter("onnx").file_name("int8")
        'model.int8.onnx'
    """

    def decorate(cls: type[Converter]) -> type[Converter]:
        cls.name, cls.suffix, cls.precisions, cls.packages, cls.install = name, suffix, precisions, packages, install
        cls.baseline = baseline
        _CONVERTERS[name] = cls
        return cls

    return decorate


def converter_names() -> tuple[str, ...]:
    """The registered formats, in registration order.

    Examples:
        >>> converter_names()
        ('onnx', 'torchscript', 'openvino', 'coreml', 'litert', 'executorch')
    """
    return tuple(_CONVERTERS)


def get_converter(name: str) -> Converter:
    """An instance of the converter for format ``name``.

    Raises:
        ConfigError: an unknown format, listing the known ones.

    Examples:
        >>> type(get_converter("torchscript")).__name__
        'TorchScriptConverter'
    """
    if name not in _CONVERTERS:
        raise ConfigError(f"unknown format {name!r}: use one of {', '.join(converter_names())} or all")
    return _CONVERTERS[name]()


def first_line(err: BaseException) -> str:
    """``Type: message``, first line only, at most 160 characters.

    Examples:
        >>> first_line(ValueError("bad shape\\nmore detail"))
        'ValueError: bad shape'
    """
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def plain_tensor_copy(module: Any) -> Any:
    """A copy of ``module`` whose parameters and buffers are ordinary tensors: a checkpoint loaded under
    ``torch.inference_mode`` holds inference tensors, on which torch.export (inside litert-torch) cannot set
    ``requires_grad`` (litert-torch and ExecuTorch export through it).

    Examples:
        >>> plain_tensor_copy(job.exported)  # doctest: +SKIP
    """
    import copy

    import torch

    copied = copy.deepcopy(module).eval()
    with torch.no_grad():
        for tensor in [*copied.parameters(), *copied.buffers()]:
            tensor.data = tensor.data.clone()
    return copied

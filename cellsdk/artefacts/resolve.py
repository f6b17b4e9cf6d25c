"""Opening an artefact: which file (the shipped model, a file, or the best verified one of a conversion folder),
its runtime with the options it was verified with, and its metadata reconciled with the caller's overrides.

Examples:
    >>> opened = open_artefact()
    >>> opened.metadata.labels[:2], opened.metadata.preprocessing.input_size
    (('basophil', 'eosinophil'), 128)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsdk.backends import Backend, backend_for_path, get_backend
from cellsdk.errors import MetadataError, ModelNotFoundError, UnsupportedFormatError
from cellsdk.metadata import ModelMetadata, Preprocessing

__all__ = ["DEFAULT_MODEL", "OpenedArtefact", "check_shapes", "default_model_path", "is_default_model",
           "open_artefact", "provenance", "resolve_metadata"]

log = logging.getLogger("cellsdk")


def resolve_metadata(path: Path, backend: Backend, labels: Sequence[str] | None,
                      preprocessing: Preprocessing | Mapping[str, Any] | None, *,
                      fallback: ModelMetadata | None = None) -> ModelMetadata:
    """The artefact's own metadata (else ``fallback``, e.g. what a bioimage.io description says), with the caller's
    labels / preprocessing laid over it.

    Examples:
        >>> opened = open_artefact()
        >>> resolve_metadata(opened.path, opened.backend, list("abcdefgh"), None).labels[:2]
        ('a', 'b')
    """
    if isinstance(preprocessing, Mapping):
        preprocessing = Preprocessing.from_dict(preprocessing)
    metadata = fallback
    if backend.metadata_json:
        try:
            metadata = ModelMetadata.from_json(backend.metadata_json)
        except MetadataError as err:
            raise MetadataError(f"{path}: {err}") from None
    if metadata is not None:
        changes: dict[str, Any] = {}
        if labels is not None:
            changes["labels"] = tuple(labels)
        if preprocessing is not None:
            changes["preprocessing"] = preprocessing
        return metadata.replace(**changes) if changes else metadata
    if labels is None or preprocessing is None:
        raise MetadataError(
            f"{path}: carries no cellsdk metadata; pass labels=[...] and preprocessing=Preprocessing(...) "
            "to load it, or convert it with cellsdk-convert"
        )
    return ModelMetadata(labels=tuple(labels), arch="unknown", preprocessing=preprocessing)


def check_shapes(path: Path, backend: Backend, metadata: ModelMetadata) -> None:
    """Refuse metadata that contradicts the model itself.

    Examples:
        >>> opened = open_artefact()
        >>> check_shapes(opened.path, opened.backend, opened.metadata.replace(labels=("a", "b")))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.errors.MetadataError: ...: the model has 8 outputs but the metadata lists 2 labels; pass the right labels
    """
    shape = backend.input_shape
    if len(shape) != 4 or shape[1] not in (None, 3):
        raise UnsupportedFormatError(f"{path}: expected an N x 3 x H x W image input, the model takes {shape}")
    size = metadata.preprocessing.input_size
    if any(side is not None and side != size for side in shape[2:]):
        raise MetadataError(
            f"{path}: the model takes {shape[2]}x{shape[3]} inputs but its metadata says {size}x{size}; "
            "fix the preprocessing"
        )
    if backend.output_count is not None and backend.output_count < len(metadata.outputs):
        raise MetadataError(
            f"{path}: the model has {backend.output_count} output(s) but its metadata lists {len(metadata.outputs)} "
            f"({', '.join(metadata.outputs)}); re-convert it with cellsdk-convert"
        )
    if backend.num_outputs is not None and backend.num_outputs != metadata.num_classes:
        raise MetadataError(
            f"{path}: the model has {backend.num_outputs} outputs but the metadata lists "
            f"{metadata.num_classes} labels; pass the right labels"
        )


#: The file name of the reference blood-cell model shipped as package data (see MODEL_CARD.md).
DEFAULT_MODEL = "bloodmnist_effnet_lite0_128.int8.onnx"


def default_model_path() -> Path:
    """Where the shipped reference blood-cell model (INT8 ONNX) is installed.

    Raises:
        ModelNotFoundError: this installation lacks the package data.

    Examples:
        >>> default_model_path().name
        'bloodmnist_effnet_lite0_128.int8.onnx'
    """
    path = _shipped_path()
    if not path.is_file():
        raise ModelNotFoundError(
            f"the default blood-cell model {DEFAULT_MODEL} is not installed with this cellsdk ({path}); "
            "reinstall cellsdk from a release or the repository, or pass a model path"
        )
    return path


@dataclass(frozen=True)
class OpenedArtefact:
    """An artefact loaded into its runtime, with its metadata reconciled.

    Attributes:
        path: the artefact's file (the one chosen from a conversion folder).
        backend: the runtime, loaded.
        metadata: the artefact's metadata, with the caller's labels / preprocessing laid over it.
        chosen: for a conversion folder, which artefact was chosen and why; else None.
    """

    path: Path
    backend: Backend
    metadata: ModelMetadata
    chosen: str | None = None


def open_artefact(path: str | os.PathLike | None = None, *, backend: str | None = None, device: str = "auto",
                  labels: Sequence[str] | None = None,
                  preprocessing: Preprocessing | Mapping[str, Any] | None = None,
                  options: Mapping[str, Any] | None = None) -> OpenedArtefact:
    """Find the artefact (the shipped model, a file, the best verified one of a conversion folder, or the weights of a
    bioimage.io package: :mod:`cellsdk.artefacts.bioimageio`), load it in
    its runtime with the options it was verified with (``options`` win), and reconcile its metadata.

    Raises:
        CellSDKError: ModelNotFoundError, UnsupportedFormatError, BackendNotInstalledError,
            PlatformNotSupportedError, MetadataError, ConfigError or DeviceUnavailableError, each saying what to do.

    Examples:
        >>> opened = open_artefact()
        >>> opened.path.name, opened.backend.name, opened.chosen
        ('bloodmnist_effnet_lite0_128.int8.onnx', 'onnxruntime', None)
    """
    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such model file or folder")
    chosen = None
    verified_options: dict[str, Any] = {}
    package = None
    if _is_package(path):
        from cellsdk.artefacts.bioimageio import open_package

        package, source = open_package(path), path
        path = package.weights
        log.info("cellsdk: running %s from the bioimage.io package %s", path.name, source.name)
    elif path.is_dir() and path.suffix.lower() != ".mlpackage":
        from cellsdk.artefacts.manifest import choose_artefact
        from cellsdk.artefacts.speed import engine_choice
        from cellsdk.platform.cpu import host_cpu

        path, chosen, verified_options = choose_artefact(path, host_cpu().cpu_class, device,
                                                         measure=engine_choice() == "measured")
        log.info("cellsdk: running %s", chosen)
    backend_cls = get_backend(backend) if backend else backend_for_path(path)
    backend_cls.check_options(verified_options)  # a bad manifest is refused even where the caller overrides it
    merged = {**verified_options, **(options or {})}  # run it as it was verified, unless told otherwise
    instance = backend_cls(path, device=device, **backend_cls.check_options(merged))
    fallback = None
    if package is not None and not instance.metadata_json and (labels is None or preprocessing is None):
        fallback = package.derived_metadata(source)
    metadata = resolve_metadata(path, instance, labels, preprocessing, fallback=fallback)
    check_shapes(path, instance, metadata)
    if package is not None:
        from cellsdk.artefacts.bioimageio import check_test_tensors

        check_test_tensors(package, instance.run, metadata)
    return OpenedArtefact(path, instance, metadata, chosen)


def _is_package(path: Path) -> bool:
    """A bioimage.io package? Only a folder, a zip or a YAML file can be one: a model file is not read for it, and
    the bioimage.io code (zip and YAML handling) is not imported to find that out."""
    if not (path.is_dir() or path.suffix.lower() in (".zip", ".yaml", ".yml")):
        return False
    from cellsdk.artefacts.bioimageio import is_package

    return is_package(path)


def _shipped_path() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / DEFAULT_MODEL


def is_default_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the shipped reference model.

    Examples:
        >>> is_default_model(default_model_path()), is_default_model("model.onnx")
        (True, False)
    """
    return Path(path).resolve() == _shipped_path()


def provenance(path: str | os.PathLike, chosen: str | None, verification: Any) -> str:
    """One line: which artefact runs (and why, for a folder's choice) and its gate status (what ``cellsdk predict``
    and ``cellsdk serve`` print).

    Examples:
        >>> from cellsdk.artefacts.gate_status import Verification
        >>> provenance(default_model_path(), None, Verification("passed", "metadata"))[:62]
        'using the shipped blood-cell model bloodmnist_effnet_lite0_128'
        >>> provenance("model.onnx", None, Verification("unknown"))[:28]
        'using model.onnx: no verific'
    """
    name = Path(path).name
    if chosen:
        return f"using {chosen}"
    if is_default_model(path):
        return (f"using the shipped blood-cell model {name} ({verification.describe()}; MODEL_CARD.md in the "
                "cellsdk repository)")
    return f"using {name}: {verification.describe()}"

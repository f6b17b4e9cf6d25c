"""``cellsdk export --bioimageio``: a cellsdk model as a bioimage.io model package (spec 0.5).

The package holds the verified fp32 weights cellsdk has — ONNX (with cellsdk's metadata, guard and test vectors
inside, so ``Classifier.load(package.zip)`` runs it as cellsdk would), TorchScript, and the PyTorch state dict
with its architecture as a source file — the input and outputs with their axes (the labels are the output's
channel names), the normalisation as the spec's ``scale_linear``, test tensors from real held-out images with the
expected outputs, the documentation (model card, "# Validation", and what the spec cannot express: the centre
crop and resize happen before the input tensor), a cover (the test cells explained), licence and citations.
It is validated with ``bioimageio.spec`` before it is written and, with ``test=True``, tested with
``bioimageio.core`` (what ``bioimageio test`` runs).

Examples:
    >>> result = export_bioimageio("runs/a/converted", "cells.zip")  # doctest: +SKIP
    >>> result.weights  # doctest: +SKIP
    ('onnx', 'torchscript', 'pytorch_state_dict')
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import atomic_path, sha256_file
from cellsdk.artefacts.bioimageio import normalise_raw, preprocessing_to_affine
from cellsdk.artefacts.checkpoints import is_checkpoint
from cellsdk.errors import BackendNotInstalledError, CellSDKError, ConfigError, MetadataError, ModelNotFoundError
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import softmax
from cellsdk.testvectors import TestVectors

__all__ = ["SPEC_FIX", "BioimageioConfig", "BioimageioExport", "export_bioimageio", "test_package", "version_problem"]

log = logging.getLogger("cellsdk.converters")

_INSTALL = "pip install 'cellsdk[bioimageio]'"
_ARCH_FILE, _ENV_FILE = "cellsdk_architecture.py", "environment.yaml"
#: the characters and length bioimage.io allows in a model's name
_NAME = re.compile(r"[A-Za-z0-9_+\- ()]{5,128}")


@dataclass(frozen=True)
class BioimageioConfig:
    """What goes into the package beside the model.

    Attributes:
        name: the package's name (default: from the model).
        description: one paragraph (default: from the model).
        authors: the authors' names.
        maintainers: GitHub user names of the people who answer for the package on bioimage.io (the zoo asks
            for at least one before an upload).
        license: an SPDX licence identifier for the weights.
        tags: search tags.
        test_images: how many held-out images the test tensors hold (one per class first).
        weights: the weights formats to include, of ``onnx``, ``torchscript``, ``pytorch_state_dict``.
        data: held-out data, only to convert a checkpoint first (its validation split verifies the conversion).
        data_cropped: that data's images already have the model's crop.
        model_card: a Markdown model card appended to the documentation (e.g. MODEL_CARD.md), or None.
    """

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ("cellsdk contributors",)
    maintainers: tuple[str, ...] = ()
    license: str = "CC-BY-4.0"
    tags: tuple[str, ...] = ("classification", "cells", "microscopy", "hematology", "2d", "onnx", "cellsdk")
    test_images: int = 8
    weights: tuple[str, ...] = ("onnx", "torchscript", "pytorch_state_dict")
    data: str | None = None
    data_cropped: bool = False
    model_card: str | None = None

    def __post_init__(self) -> None:
        unknown = [w for w in self.weights if w not in ("onnx", "torchscript", "pytorch_state_dict")]
        if unknown or "onnx" not in self.weights:
            raise ConfigError(f"weights {list(self.weights)}: onnx and any of torchscript, pytorch_state_dict")
        if not 1 <= self.test_images <= 64:
            raise ConfigError(f"test_images {self.test_images}: use 1..64")
        if not self.authors or not all(a.strip() for a in self.authors):
            raise ConfigError("authors: name at least one author")
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise ConfigError(f"name {self.name!r}: bioimage.io takes 5 to 128 letters, digits, spaces and _+-() only")


@dataclass(frozen=True)
class BioimageioExport:
    """What :func:`export_bioimageio` wrote.

    Attributes:
        path: the package (a zip).
        size_bytes: its size.
        weights: the weights formats in it.
        notes: what was left out and why, one line each.
        not_expressed: cellsdk preprocessing the spec has no operation for (stated in the documentation).
        description: the package's description (``rdf.yaml``) as a dictionary.
    """

    path: Path
    size_bytes: int
    weights: tuple[str, ...]
    notes: tuple[str, ...]
    not_expressed: tuple[str, ...]
    description: dict[str, Any] = field(repr=False)


#: bioimageio.core 0.11 pins bioimageio.spec 0.5.12.0, whose serializers raise a TypeError under pydantic 2.14;
#: 0.5.14.3 works with both (what scripts/setup.sh installs over it)
SPEC_FIX = "pip install --no-deps 'bioimageio.spec==0.5.14.3'"


def version_problem(versions: dict[str, str] | None = None) -> str | None:
    """The known-broken bioimageio.spec / pydantic pair, as one line with its fix; None when the pair works (or
    either is not installed).

    ``pip install 'cellsdk[bioimageio]'`` resolves bioimageio.core 0.11's exact pin, bioimageio.spec 0.5.12.0,
    whose serializers fail under pydantic 2.14 deep inside ``bioimageio test``: cellsdk says so before it starts.

    Examples:
        >>> version_problem({"bioimageio.spec": "0.5.12.0", "pydantic": "2.14.3"})[:40]
        'bioimageio.spec 0.5.12.0 fails under pyd'
        >>> version_problem({"bioimageio.spec": "0.5.14.3", "pydantic": "2.14.3"}) is None
        True
    """
    if versions is None:
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for name in ("bioimageio.spec", "pydantic"):
            try:
                versions[name] = version(name)
            except PackageNotFoundError:
                return None
    spec, pydantic = versions.get("bioimageio.spec"), versions.get("pydantic")
    if spec is None or pydantic is None:
        return None
    from packaging.version import Version  # a dependency of bioimageio.spec

    if not (Version(spec) < Version("0.5.14") and Version(pydantic) >= Version("2.14")):
        return None
    return (f"bioimageio.spec {spec} fails under pydantic {pydantic} (its serializers raise a TypeError inside "
            f"bioimageio test; bioimageio.core 0.11 pins it): {SPEC_FIX}")


def _spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise BackendNotInstalledError(f"exporting a bioimage.io package needs bioimageio.spec: {_INSTALL}") from None
    problem = version_problem()
    if problem:
        raise BackendNotInstalledError(problem)
    return spec


def _conversion_folder(source: Path, config: BioimageioConfig, work: Path) -> tuple[Path, Path | None]:
    """The conversion folder to package, converting a checkpoint first; and the checkpoint, when known."""
    if source.is_dir() and (source / "manifest.json").is_file():
        return source, None
    if source.is_file() and is_checkpoint(source):
        if config.data is None:
            raise ConfigError(f"{source} is a checkpoint: pass --data DATA (held-out images verify the conversion "
                              "and give the test tensors), or a conversion folder")
        from cellsdk.converters.pipeline import ConvertConfig, convert
        from cellsdk.converters.targets import CpuTargets

        wanted = tuple(w for w in ("onnx", "torchscript") if w in config.weights)
        result = convert(source, work / "converted", ConvertConfig(formats=wanted, calib=config.data,
                                                                    data_cropped=config.data_cropped,
                                                                    cpu_targets=CpuTargets.parse("native")),
                         progress=False)
        if result.failed:
            raise CellSDKError(f"{source}: the conversion failed verification "
                               f"({', '.join(a['file'] for a in result.failed)}); see cellsdk-convert")
        return result.out_dir, source
    if not source.exists():
        raise ModelNotFoundError(f"{source}: no such checkpoint or conversion folder")
    raise ConfigError(f"{source}: not a checkpoint (.safetensors) or a conversion folder with manifest.json")


def _fp32(folder: Path, manifest: dict[str, Any], fmt: str) -> Path | None:
    for entry in manifest.get("artefacts", []):
        if entry.get("format") == fmt and entry.get("precision") == "fp32" and entry.get("status") == "passed":
            path = folder / entry["file"]
            if path.is_file():
                return path
    return None


def _find_checkpoint(folder: Path, manifest: dict[str, Any], given: Path | None) -> tuple[Path | None, str]:
    record = manifest.get("source_checkpoint") or {}
    expected = record.get("sha256")
    candidates = [given] if given is not None else [Path(record.get("path", "")), folder / record.get("path", ""),
                                                    folder.parent / Path(record.get("path", "")).name]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and candidate.suffix == ".safetensors":
            if expected and sha256_file(candidate) != expected:
                if given is not None:
                    raise ConfigError(f"{given} is not the checkpoint {folder} was converted from (sha256 differs)")
                continue
            return candidate, ""
    return None, (f"no pytorch_state_dict: the checkpoint the model came from ({record.get('path', 'unknown')}) "
                  "was not found; pass --checkpoint")


def _state_dict(checkpoint: Path, metadata: ModelMetadata, staging: Path) -> tuple[dict[str, Any] | None, str]:
    import torch

    from cellsdk.converters.heads import with_outputs
    from cellsdk.training.checkpoint import load_checkpoint
    from cellsdk.training.models import size_kwargs

    model, checkpoint_metadata = load_checkpoint(checkpoint)
    if checkpoint_metadata.training.get("pruning"):
        return None, ("no pytorch_state_dict: a pruned network's layer shapes differ from timm's architecture "
                      "(ONNX and TorchScript carry it)")
    wrapped = with_outputs(model, metadata.outputs, metadata.preprocessing.input_size)
    torch.save({k: v.contiguous() for k, v in wrapped.state_dict().items()}, staging / "weights.pt")
    from cellsdk.converters.bioimageio_files import ARCHITECTURE_CALLABLE, ARCHITECTURE_SOURCE

    (staging / _ARCH_FILE).write_text(ARCHITECTURE_SOURCE)
    import timm

    (staging / _ENV_FILE).write_text(
        "name: cellsdk-classifier\nchannels: [conda-forge]\ndependencies:\n  - python>=3.10\n  - pip\n  - pip:\n"
        f"    - torch=={torch.__version__.split('+')[0]}\n    - timm=={timm.__version__}\n")
    kwargs = {"arch": metadata.arch, "num_classes": metadata.num_classes, "outputs": list(metadata.outputs),
              "timm_kwargs": size_kwargs(metadata.arch, metadata.preprocessing.input_size)}
    return {"source": "weights.pt", "pytorch_version": torch.__version__.split("+")[0],
            "architecture": {"source": _ARCH_FILE, "callable": ARCHITECTURE_CALLABLE, "kwargs": kwargs},
            "dependencies": {"source": _ENV_FILE}}, ""


def export_bioimageio(source: str | os.PathLike, out: str | os.PathLike, config: BioimageioConfig | None = None, *,
                      checkpoint: str | os.PathLike | None = None) -> BioimageioExport:
    """Write a bioimage.io model package (a zip) of a conversion folder, or of a checkpoint converted first.

    Args:
        source: a conversion folder (``cellsdk-convert --out``) with a verified fp32 ONNX, or a checkpoint (then
            ``config.data`` is needed to convert and verify it).
        out: the zip to write (replaced atomically).
        config: names, licence, authors, which weights, how many test images.
        checkpoint: the checkpoint the folder came from, for the state-dict weights (default: the manifest's).

    Raises:
        CellSDKError: a source without a verified fp32 ONNX or test vectors, bioimageio.spec missing, or a
            description the spec rejects (each saying what to do).

    Examples:
        >>> export_bioimageio("runs/a/converted", "cells.zip").path.name  # doctest: +SKIP
        'cells.zip'
    """
    from cellsdk.classifier import Classifier
    from cellsdk.converters.bioimageio_files import (
        CITATIONS,
        cover_image,
        documentation,
        not_expressed,
        output_descriptions,
        test_tensors,
        write_tensors,
    )

    config = config or BioimageioConfig()
    spec = _spec()
    import yaml

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"{out}: a bioimage.io package is a .zip; name it {out.with_suffix('.zip').name}")
    with tempfile.TemporaryDirectory(prefix="cellsdk-bioimageio-") as tmp:
        work = Path(tmp)
        folder, converted_from = _conversion_folder(Path(source), config, work)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise MetadataError(f"{folder / 'manifest.json'}: unreadable ({err}); re-run cellsdk-convert") from None
        onnx = _fp32(folder, manifest, "onnx")
        if onnx is None:
            raise ConfigError(f"{folder}: no verified fp32 ONNX in it; convert with cellsdk-convert --formats onnx")
        classifier = Classifier.load(onnx, self_check=False)
        metadata = classifier.metadata
        if not metadata.test_vectors:
            raise MetadataError(f"{onnx}: carries no test vectors (held-out images); re-convert it with this cellsdk")
        vectors = TestVectors.from_dict(metadata.test_vectors)
        staging = work / "package"
        staging.mkdir()
        notes: list[str] = []
        weights: dict[str, Any] = {}
        if "pytorch_state_dict" in config.weights:
            found, why = _find_checkpoint(folder, manifest, Path(checkpoint) if checkpoint else converted_from)
            entry, why = _state_dict(found, metadata, staging) if found else (None, why)
            if entry:
                weights["pytorch_state_dict"] = entry
            else:
                notes.append(why)
        parent = "pytorch_state_dict" if weights else None
        shutil.copyfile(onnx, staging / "model.onnx")
        import onnx as onnx_lib

        opset = max((o.version for o in onnx_lib.load(str(onnx), load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx")), default=17)
        weights["onnx"] = {"source": "model.onnx", "opset_version": int(opset), **({"parent": parent} if parent else {})}
        if "torchscript" in config.weights:
            torchscript = _fp32(folder, manifest, "torchscript")
            if torchscript is not None:
                import torch

                shutil.copyfile(torchscript, staging / "model.torchscript")
                weights["torchscript"] = {"source": "model.torchscript", "parent": parent or "onnx",
                                          "pytorch_version": torch.__version__.split("+")[0]}
            else:
                notes.append("no torchscript: the conversion folder has no verified fp32 TorchScript "
                             "(cellsdk-convert --formats onnx,torchscript)")
        raw, chosen = test_tensors(vectors, metadata, config.test_images)
        gain, offset = preprocessing_to_affine(metadata.preprocessing)
        values = dict(zip(metadata.outputs, classifier.backend.run_all(normalise_raw(raw, metadata.preprocessing)),
                          strict=False))
        np.save(staging / "test_input.npy", raw)
        values["probabilities"] = softmax(values["logits"])
        write_tensors(staging, raw, values)
        cover = cover_image(classifier, vectors, chosen)
        cover.save(staging / "cover.png", optimize=True)
        missing = not_expressed(metadata)
        name = config.name or f"cellsdk {metadata.arch} cell classifier ({len(metadata.labels)} classes " \
                              f"{metadata.preprocessing.input_size} px)"
        test_ids = [vectors.ids[i] for i in chosen]
        (staging / "README.md").write_text(documentation(metadata, name=name, weights=list(weights), notes=notes,
                                                         test_ids=test_ids, model_card=config.model_card))
        size = metadata.preprocessing.input_size
        channels = ["red", "green", "blue"] if metadata.preprocessing.color_order == "RGB" else ["blue", "green", "red"]
        description = {
            "type": "model", "format_version": spec.model.v0_5.ModelDescr.implemented_format_version,
            "name": name,
            "description": config.description or (
                f"Classifies single cells into {', '.join(metadata.labels)}. Input: the cell's image centre-cropped "
                f"and resized to {size} px (see the documentation: the crop is not a spec operation)."),
            "authors": [{"name": author} for author in config.authors],
            "cite": [dict(entry) for entry in CITATIONS], "license": config.license, "tags": list(config.tags),
            "documentation": {"source": "README.md"}, "covers": [{"source": "cover.png"}],
            "inputs": [{"id": "raw", "description": f"RGB cell image, {size} x {size}, after crop and resize",
                        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels},
                                 {"type": "space", "id": "y", "size": size},
                                 {"type": "space", "id": "x", "size": size}],
                        "test_tensor": {"source": "test_input.npy"},
                        "sample_tensor": {"source": "sample_input.png"},
                        "data": {"type": "uint8", "range": [0, 255]},
                        "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                          {"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain,
                                                                            "offset": offset}},
                                          # the spec would otherwise cast back to the input's uint8
                                          {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]}],
            "outputs": output_descriptions(metadata, values), "weights": weights,
            "config": {"cellsdk": {"metadata_in": "weights.onnx (metadata_props key 'cellsdk')",
                                   "schema_version": metadata.schema_version, "labels": list(metadata.labels),
                                   "preprocessing": metadata.preprocessing.to_dict(),
                                   "not_expressed_in_spec": missing,
                                   "reference_metrics": dict(metadata.reference_metrics),
                                   "test_images": test_ids,
                                   "source_checkpoint_sha256": metadata.source_checkpoint_sha256}},
        }
        rdf = staging / "rdf.yaml"
        rdf.write_text(yaml.safe_dump(description, sort_keys=False, allow_unicode=True))
        descr = _validated(spec, rdf, io_checks=True)  # files, hashes, tensors: everything but the GitHub names
        if config.maintainers:  # bioimageio.spec checks GitHub user names online: they go in after the full check
            description["maintainers"] = [{"github_user": user} for user in config.maintainers]
            rdf.write_text(yaml.safe_dump(description, sort_keys=False, allow_unicode=True))
            descr = _validated(spec, rdf, io_checks=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        from bioimageio.spec import ValidationContext

        with atomic_path(out) as target, ValidationContext(root=staging, perform_io_checks=not config.maintainers):
            spec.save_bioimageio_package(descr, output_path=target)
    return BioimageioExport(out, out.stat().st_size, tuple(weights), tuple(notes), tuple(missing), description)


def _validated(spec: Any, rdf: Path, *, io_checks: bool) -> Any:
    from bioimageio.spec import InvalidDescr, ValidationContext

    with ValidationContext(root=rdf.parent, perform_io_checks=io_checks):
        descr = spec.load_description(rdf)
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.details
        first = next((d for d in errors if d.status == "failed"), None)
        detail = "; ".join(f"{e.loc}: {e.msg}" for e in (first.errors if first else [])[:3])
        log.debug("bioimage.io validation: %s", [(e.loc, e.msg) for d in errors for e in d.errors])
        raise MetadataError(f"bioimage.io rejected the package's description ({detail or 'no detail given'}); fix "
                            "the option it names (--license takes an SPDX identifier), or report it if it is cellsdk's")
    return descr


def test_package(path: str | os.PathLike, weight_format: str | None = None) -> tuple[bool, str]:
    """Run bioimage.io's own test (``bioimageio test``) on a package: each weights format on its test tensors.

    Returns:
        Whether it passed, and the summary as text.

    Raises:
        BackendNotInstalledError: bioimageio.core is not installed, or bioimageio.spec is the version that fails
            under this pydantic (:func:`version_problem`).

    Examples:
        >>> test_package("cells.zip")[0]  # doctest: +SKIP
        True
    """
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise BackendNotInstalledError(f"testing a bioimage.io package needs bioimageio.core: {_INSTALL}") from None
    problem = version_problem()
    if problem:
        raise BackendNotInstalledError(problem)
    summary = test_model(str(path), weight_format=weight_format)  # type: ignore[arg-type]
    lines = [f"{summary.name}: {summary.status}"]
    for detail in summary.details:
        lines.append(f"  {detail.status:>7}  {detail.name}")
        lines += [f"           {e.loc}: {e.msg}"[:300] for e in detail.errors[:3]]
    return summary.status == "passed", "\n".join(lines)

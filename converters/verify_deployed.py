"""Verify an existing artefact on this machine's CPU class (and emulated ones) and record it in the artefact.

``cellsdk-convert`` verifies what it writes on the classes it is asked for;
a model deployed later on another kind of machine can be checked there with
``cellsdk verify MODEL --reference CHECKPOINT --data DATA``: the same gate
(:func:`~cellsdk.converters.gate.verify_artefact`) natively, and under QEMU for
any emulated classes asked for, against the fp32 reference on real held-out
images. The new records replace older ones of the same target and class in the
artefact's ``cpu_verification`` (and in its conversion folder's manifest, if
it has one), so ``Classifier.load`` on this class stops warning.

The reference is the fp32 checkpoint the artefact was converted from (needs
torch) or, torch-free, a float artefact converted from the same checkpoint.

On an NVIDIA GPU, ``cellsdk verify MODEL --device cuda`` (or ``cuda:N``,
``tensorrt``) runs the same gate with the artefact on the GPU: the conversion's
checks ran on CPUs, and a GPU computes differently (cuDNN's algorithms, fp16
kernels, TensorRT's fused and re-quantized layers). The record names the GPU
model and driver and goes to the artefact's ``gpu_verification``; a conversion
folder loaded on that device then prefers artefacts verified on that GPU model
and never picks one that failed there (:func:`cellsdk.artefacts.manifest.choose_artefact`).

Examples:
    >>> result = verify_deployed("model.int8.onnx", "data/bloodmnist_128",
    ...                          reference="best.safetensors", data_cropped=True)  # doctest: +SKIP
    >>> result["status"]  # doctest: +SKIP
    'passed'
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import artefact_files, write_json
from cellsdk.artefacts.info import read_metadata
from cellsdk.artefacts.manifest import MANIFEST_NAME, STATUS_FAILED, STATUS_PASSED, manifest_entry
from cellsdk.backends import backend_for_path
from cellsdk.converters.base import get_converter
from cellsdk.converters.calibration import evaluation_set
from cellsdk.converters.gate import VerifyConfig, reference_logits, verify_artefact
from cellsdk.converters.pipeline import BACKEND_OF, describe_files, native_self_check
from cellsdk.converters.targets import CpuTargets, verify_on_targets
from cellsdk.errors import ConfigError, DeviceUnavailableError
from cellsdk.metadata import SCHEMA_VERSION
from cellsdk.platform.gpu import device_index, gpu_device_kind, gpu_identity

__all__ = ["format_verification", "verify_deployed"]

_FORMAT_OF = {backend: fmt for fmt, backend in BACKEND_OF.items()}


def verify_deployed(artefact: str | os.PathLike, data: str | os.PathLike, *, reference: str | os.PathLike,
                    split: str = "val", data_cropped: bool = False, labels: str | None = None,
                    limit: int | None = None, targets: CpuTargets | None = None, verify: VerifyConfig | None = None,
                    seed: int = 0, write: bool = True, progress: bool = True, device: str = "cpu",
                    vectors: str = "missing") -> dict[str, Any]:
    """Run the gate on ``artefact`` on the requested CPU classes (or on a GPU ``device``) and record the result in it.

    With ``device`` ``cuda``, ``cuda:N`` or ``tensorrt`` the gate runs the artefact on that NVIDIA GPU instead
    of the CPU and the record goes to the artefact's ``gpu_verification`` (one per target and GPU model; see
    :func:`_verify_on_gpu`); emulated CPU classes cannot be combined with it.

    On the CPU, with the fp32 checkpoint as ``reference``, the artefact also gets test vectors for its self-check
    on other machines (:mod:`cellsdk.artefacts.selfcheck`) when it carries none (``vectors="missing"``, the default), or new
    ones (``"replace"``); ``"keep"`` leaves them as they are. The new vectors are self-checked here at once.

    Returns:
        ``status`` (passed / failed), ``records`` (this run's), ``cpu_verification`` (all, as written) or
        ``gpu_verification`` for a GPU device, ``written`` (whether the artefact was updated), and
        ``test_vectors`` (what was embedded, with the self-check here) when vectors were embedded.

    Raises:
        ConfigError: the reference is not a float model of the same source checkpoint, or no target.
        DeviceUnavailableError: a GPU device this machine, its driver or the artefact's runtime cannot use
            (raised before any image is read).

    Examples:
        >>> result = verify_deployed("model.int8.onnx", "data/bloodmnist_128", reference="best.safetensors")  # doctest: +SKIP
        >>> result["status"]  # doctest: +SKIP
        'passed'
    """
    path = Path(artefact)
    kind = gpu_device_kind(device)
    targets = targets or (CpuTargets.parse("native") if kind else CpuTargets())
    verify = verify or VerifyConfig()
    if not targets.names:
        raise ConfigError("nothing to verify: --verify-cpus none; name native and / or emulated classes")
    metadata = read_metadata(path)
    backend = backend_for_path(path)
    fmt = _FORMAT_OF[backend.name]
    if kind is not None:
        return _verify_on_gpu(path, fmt, backend, metadata, device, kind, data, reference=Path(reference), split=split,
                              data_cropped=data_cropped, labels=labels, limit=limit, targets=targets, verify=verify,
                              seed=seed, write=write)
    if str(device).lower() != "cpu":
        raise ConfigError(f"device {device!r}: cellsdk verify runs the gate on cpu (this machine's CPU class and "
                          "emulated ones) or on an NVIDIA GPU (cuda, cuda:N, tensorrt)")
    if vectors not in ("missing", "replace", "keep"):
        raise ConfigError(f"vectors={vectors!r}: use missing, replace or keep")
    images = evaluation_set(data, metadata, split=split, data_cropped=data_cropped, labels=labels, limit=limit,
                            seed=seed)
    model, logits = _reference(Path(reference), metadata, images)
    entry = manifest_entry(path)
    manifest_path = path.parent / MANIFEST_NAME if entry is not None else None
    options = (entry or {}).get("runtime_options") or get_converter(fmt).verify_options(metadata.precision)
    embed = write and model is not None and (vectors == "replace" or (vectors == "missing" and
                                             metadata.test_vectors is None))
    native = targets.names and "native" in targets.names
    outputs: dict[str, np.ndarray] = {}
    record = verify_artefact(path, metadata.precision, metadata, images, logits, verify, options,
                             outputs) if native else {}
    job = {"file": path.name, "precision": metadata.precision, "runtime_options": options,
           "status": record.pop("status", STATUS_PASSED), "reasons": record.pop("reasons", []),
           "verification": record}
    new = verify_on_targets([(job, path, metadata)], images, logits, verify, targets, seed=seed,
                            progress=progress, native_outputs=outputs)[path.name]
    replaced = {(r.get("target"), r.get("cpu_class")) for r in new}
    merged = [r for r in metadata.cpu_verification if (r.get("target"), r.get("cpu_class")) not in replaced] + new
    status = STATUS_FAILED if any(r["status"] == STATUS_FAILED for r in new) else STATUS_PASSED
    result: dict[str, Any] = {"file": str(path), "status": status, "records": new, "cpu_verification": merged,
                              "written": write, "images": len(images)}
    if write:
        updated = metadata.replace(cpu_verification=tuple(merged), schema_version=SCHEMA_VERSION)
        if embed:
            updated, result["test_vectors"] = _with_vectors(path, updated, model, images, logits, verify,
                                                            data_cropped, seed, options)
            if result["test_vectors"].get("self_check", {}).get("status") == STATUS_FAILED:
                result["status"] = STATUS_FAILED
        get_converter(fmt).write_metadata(path, updated)
        if manifest_path is not None and entry is not None:
            _update_manifest(manifest_path, path, merged)
    return result


def _with_vectors(path: Path, metadata: Any, model: Any, images: Any, logits: np.ndarray, verify: VerifyConfig,
                  data_cropped: bool, seed: int, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``metadata`` with test vectors from the fp32 model on the held-out ``images``, within the artefact's budget,
    with the artefact's own OOD scores on them and its self-check here."""
    import tempfile

    from cellsdk.converters.base import ExportJob
    from cellsdk.converters.testvectors import build
    from cellsdk.testvectors import TestVectors, size_budget

    size = sum(f.stat().st_size for f in artefact_files(path))
    if metadata.test_vectors is not None:  # the budget is a share of the artefact without its old vectors
        size -= TestVectors.from_dict(metadata.test_vectors).nbytes()
    with tempfile.TemporaryDirectory(prefix="cellsdk-vectors-") as tmp:
        job = ExportJob(model=model, metadata=metadata, workdir=Path(tmp))
        full = build(job, images, logits, verify.to_dict(), data_cropped=data_cropped, seed=seed)
    chosen, verdict = native_self_check(path, options, full, size) if full is not None else (None, None)
    if chosen is None or verdict is None:
        return metadata.replace(test_vectors=None), {"images": 0, "budget_bytes": size_budget(size)}
    return metadata.replace(test_vectors=chosen.to_dict()), {
        "images": len(chosen), "bytes": chosen.nbytes(), "budget_bytes": size_budget(size),
        "artefact_bytes_without": size, "ids": list(chosen.ids), "self_check": verdict.to_dict()}


def _verify_on_gpu(path: Path, fmt: str, backend: Any, metadata: Any, device: str, kind: str, data: str | os.PathLike, *,
                   reference: Path, split: str, data_cropped: bool, labels: str | None, limit: int | None,
                   targets: CpuTargets, verify: VerifyConfig, seed: int, write: bool) -> dict[str, Any]:
    """The gate with the artefact on an NVIDIA GPU; the record replaces older ones of the same target and GPU model.

    The reference stays the fp32 PyTorch model on the CPU: the GPU's arithmetic (cuDNN's algorithms, fp16
    kernels, TensorRT's fused layers) is what is judged. fp16 artefacts ask the TensorRT provider for fp16.
    """
    if any(name != "native" for name in targets.names):
        raise ConfigError(f"--verify-cpus {','.join(targets.names)} with --device {device}: emulated CPU classes check "
                          "CPU arithmetic; verify on the GPU and on CPU classes in two runs")
    reason = backend.device_unavailable_reason(kind)
    if reason is None and backend.name == "onnxruntime":  # also GPU `index`, and the libraries the session loads
        import onnxruntime as ort

        from cellsdk.platform.gpu import onnxruntime_cuda_problem

        reason = onnxruntime_cuda_problem(ort, tensorrt=kind == "tensorrt", index=device_index(device))
    if reason is not None:
        raise DeviceUnavailableError(f"device {device!r}: {reason}")
    identity = gpu_identity(device) or {"gpu": "unknown NVIDIA GPU (NVML cannot name it)"}
    images = evaluation_set(data, metadata, split=split, data_cropped=data_cropped, labels=labels, limit=limit,
                            seed=seed)
    _, logits = _reference(reference, metadata, images)
    entry = manifest_entry(path)
    manifest_path = path.parent / MANIFEST_NAME if entry is not None else None
    options = dict((entry or {}).get("runtime_options") or get_converter(fmt).verify_options(metadata.precision))
    if kind == "tensorrt" and metadata.precision == "fp16":
        options["tensorrt_fp16"] = True
    record = verify_artefact(path, metadata.precision, metadata, images, logits, verify, options, device=device)
    record.pop("guard", None)
    new = {"target": kind, "device": device, **identity, "runtime_options": options,
           "status": record.pop("status"), "reasons": record.pop("reasons"), **record,
           "verified_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    merged = [r for r in metadata.gpu_verification
              if (r.get("target"), r.get("gpu")) != (new["target"], new["gpu"])] + [new]
    if write:
        get_converter(fmt).write_metadata(path, metadata.replace(gpu_verification=tuple(merged),
                                                                 schema_version=SCHEMA_VERSION))
        if manifest_path is not None and entry is not None:
            _update_manifest(manifest_path, path, merged, key="gpu_verification")
    return {"file": str(path), "status": new["status"], "records": [new], "gpu_verification": merged,
            "written": write, "images": len(images), "device": device}


def _reference(reference: Path, metadata: Any, images: Any) -> tuple[Any, np.ndarray]:
    """The fp32 PyTorch model (None for a float artefact) and its logits on ``images``, from the source checkpoint
    (torch) or a float artefact of it (torch-free)."""
    from cellsdk.classifier import Classifier

    if not reference.exists():
        raise ConfigError(f"{reference}: no such reference model; pass the fp32 checkpoint the artefact was "
                          "converted from (or a fp32 artefact of it)")
    source = metadata.source_checkpoint_sha256
    if reference.suffix.lower() == ".safetensors":
        from cellsdk._io import sha256_file
        from cellsdk.training.checkpoint import load_checkpoint

        if source and sha256_file(reference) != source:
            raise ConfigError(f"{reference} is not the checkpoint this artefact was converted from (its metadata "
                              f"names sha256 {source[:12]}...); pass that checkpoint or a float artefact of it")
        model, _ = load_checkpoint(reference)
        return model, reference_logits(model, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Classifier.load(reference, device="cpu")
    if ref.metadata.precision not in ("fp32", "fp16"):
        raise ConfigError(f"{reference}: the reference must be a float model, not {ref.metadata.precision}")
    if source and ref.metadata.source_checkpoint_sha256 != source:
        raise ConfigError(f"{reference} was converted from another checkpoint than {metadata.arch} artefact "
                          "under test; pass a float artefact of the same source")
    return None, np.concatenate([ref.raw_outputs(b) for b in images.batches(64)]).astype(np.float64)


def _update_manifest(manifest: Path, path: Path, records: list[dict[str, Any]], key: str = "cpu_verification") -> None:
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for entry in data["artefacts"]:
        if entry.get("file") == path.name:
            entry[key] = records
            entry["size_bytes"], entry["sha256"], entry["files"] = describe_files(path)
    write_json(manifest, data)


def format_verification(model: str | os.PathLike, result: dict[str, Any]) -> tuple[str, list[str]]:
    """:func:`verify_deployed`'s result as ``cellsdk verify`` prints it: the report, and notes for stderr (CPU classes
    that could not be verified, with why).

    Examples:
        >>> report, notes = format_verification("m.onnx", {"images": 400, "records": [], "written": False,
        ...                                                 "cpu_verification": []})
        >>> report, notes
        ('m.onnx: 400 held-out images', [])
    """
    from cellsdk.artefacts.info import format_cpu_records, format_gpu_records
    from cellsdk.converters.targets import unverified_notes

    lines = [f"{model}: {result['images']} held-out images"]
    if "gpu_verification" in result:
        lines.extend(format_gpu_records(result["records"]))
        if result["written"]:
            lines.append(f"recorded in {model} ({len(result['gpu_verification'])} GPU records in all)")
        return "\n".join(lines), []
    lines.extend(format_cpu_records(result["records"]))
    if result["written"]:
        lines.append(f"recorded in {model} ({len(result['cpu_verification'])} CPU-class records in all)")
    vectors = result.get("test_vectors")
    if vectors is not None:
        check = vectors.get("self_check") or {}
        lines.append(f"test vectors: {vectors['images']} images, {vectors.get('bytes', 0) / 1e3:.0f} KB (budget "
                     f"{vectors['budget_bytes'] / 1e3:.0f} KB); self-check here: {check.get('status', 'not run')}"
                     + (f" ({'; '.join(check['reasons'])})" if check.get("reasons") else ""))
    return "\n".join(lines), unverified_notes([{"cpu_verification": result["records"]}])

"""Reading a conversion folder's ``manifest.json`` and choosing the artefact to run.

``cellsdk-convert`` writes one manifest per output folder listing every
artefact with its format, precision and verification status. The runtime
reads it to pick the fastest artefact that passed verification and can run on
this platform.

The fields the runtime relies on, per entry of ``artefacts``: ``file`` (path
relative to the folder), ``status`` (``passed``, ``failed`` or ``not verified
on this platform``), ``precision``, and optionally ``backend``,
``latency_ms`` (measured at conversion) and ``runtime_options`` (the
``Classifier.load`` options the artefact was verified with).

Examples:
    >>> choose_artefact("runs/converted")  # doctest: +SKIP
    (PosixPath('runs/converted/model.int8.onnx'), 'model.int8.onnx (onnxruntime, int8): ...', {})
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cellsdk._io import parse_json
from cellsdk.backends import backend_for_path, backend_names, get_backend
from cellsdk.errors import MetadataError, UnsupportedFormatError

__all__ = [
    "MANIFEST_NAME", "STATUS_FAILED", "STATUS_NOT_VERIFIED", "STATUS_PASSED", "artefact_path", "choose_artefact",
    "manifest_entry", "read_manifest",
]

MANIFEST_NAME = "manifest.json"
STATUS_PASSED = "passed"
STATUS_FAILED = "failed"
STATUS_NOT_VERIFIED = "not verified on this platform"
_PRECISION_RANK = {"int4": 0, "int6": 0, "int8": 0, "fp16": 1, "bf16": 1, "fp32": 2}
#: on a GPU: fp16 (tensor cores) first; int8 QDQ models run dequantised on the CUDA provider
_GPU_PRECISION_RANK = {"fp16": 0, "bf16": 0, "fp32": 1, "int8": 2, "int6": 3, "int4": 3}


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Load and check ``folder/manifest.json``.

    Raises:
        UnsupportedFormatError: no manifest in the folder.
        MetadataError: the manifest is not valid JSON or lists no artefacts.

    Examples:
        >>> read_manifest("runs/converted")["artefacts"][0]["file"]  # doctest: +SKIP
        'model.fp32.onnx'
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UnsupportedFormatError(
            f"{folder}: a folder without {MANIFEST_NAME}; pass a model file or a cellsdk-convert output folder"
        )
    try:
        manifest = parse_json(path.read_bytes())
    except (ValueError, OSError) as err:
        raise MetadataError(f"{path}: unreadable manifest ({err})") from None
    artefacts = manifest.get("artefacts") if isinstance(manifest, dict) else None
    if not isinstance(artefacts, list) or not all(isinstance(a, dict) and "file" in a for a in artefacts):
        raise MetadataError(f"{path}: manifest lists no artefacts (expected 'artefacts': [{{'file': ...}}, ...])")
    for entry in artefacts:
        artefact_path(folder, entry["file"])  # every listed file must stay inside the folder
        wrong = [key for key in ("status", "backend", "precision", "format") if key in entry
                 and not isinstance(entry[key], str)]
        if wrong:
            raise MetadataError(f"{path}: {', '.join(wrong)} of {entry['file']} must be text")
        options = entry.get("runtime_options")
        if options is not None and not isinstance(options, dict):
            raise MetadataError(f"{path}: runtime_options of {entry['file']} must be an object, got "
                                f"{type(options).__name__}")
    return manifest


def manifest_entry(artefact: str | os.PathLike) -> dict[str, Any] | None:
    """The entry for ``artefact`` in the ``manifest.json`` beside it, or None (no manifest, unreadable, not listed).

    Examples:
        >>> manifest_entry("no/such/model.onnx") is None
        True
    """
    path = Path(artefact)
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        data = parse_json(manifest.read_bytes())
        return next(a for a in data.get("artefacts", []) if isinstance(a, dict) and a.get("file") == path.name)
    except (ValueError, OSError, StopIteration, AttributeError):
        return None


def artefact_path(folder: str | os.PathLike, file: Any) -> Path:
    """``folder / file`` for a file name a manifest lists, refusing anything that leads outside ``folder``.

    A manifest is data, possibly from someone else: an absolute path, ``..`` or a symbolic link out of the
    folder would make loading the folder run a model from elsewhere on the disk.

    Raises:
        MetadataError: the name is not a relative path inside the folder.

    Examples:
        >>> artefact_path("conv", "model.int8.onnx").as_posix()
        'conv/model.int8.onnx'
        >>> artefact_path("conv", "../other/model.onnx")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.errors.MetadataError: conv/manifest.json: artefact file '../other/model.onnx' is outside the folder; ...
    """
    root = Path(folder)
    refusal = (f"{root / MANIFEST_NAME}: artefact file {file!r} is outside the folder; a manifest may only list "
               "files inside its own folder")
    if not isinstance(file, str) or not file or "\x00" in file:
        raise MetadataError(f"{root / MANIFEST_NAME}: artefact file {file!r} is not a file name")
    relative = Path(file)
    if relative.is_absolute() or relative.drive or ".." in relative.parts or "\\" in file:
        raise MetadataError(refusal)
    target = root / relative
    if target.exists() or target.is_symlink():
        real_root = root.resolve()
        real = target.resolve()
        if real != real_root and real_root not in real.parents:
            raise MetadataError(refusal)
    return target


def choose_artefact(folder: str | os.PathLike, cpu_class: str | None = None,
                    device: str = "auto", *, measure: bool = False) -> tuple[Path, str, dict[str, Any]]:
    """The artefact to run from a conversion folder, a sentence saying why, and its verified runtime options.

    For a GPU ``device`` (``cuda``, ``cuda:N``, ``tensorrt``) only artefacts whose runtime runs there are
    candidates: those with a passed ``gpu_verification`` record for that target on this GPU model
    (``cellsdk verify --device cuda``) first, one that failed there never; then fp16 before fp32 before int8
    (the latencies recorded at conversion are CPU figures). The sentence says whether the choice was verified
    on this GPU or only on CPUs.

    Among artefacts whose status is ``passed`` and whose backend can run here,
    those verified for ``cpu_class`` (this machine's, see :mod:`cellsdk.platform.cpu`)
    come first: float artefacts always count as verified, int8 ones only with
    a passed record for the class in their ``cpu_verification``, and an int8
    artefact that failed on the class is never chosen. Then the lowest
    ``latency_ms`` wins; without latencies, int8 before fp16 before fp32, then
    onnxruntime, openvino, torchscript, coreml. With ``measure`` (what ``Classifier.load`` does), the verified
    ONNX Runtime and OpenVINO candidates are timed on this machine instead (:mod:`cellsdk.artefacts.speed`,
    once per machine, cached) and the fastest here wins: the converting machine's ranking need not hold here.

    Raises:
        UnsupportedFormatError: nothing in the folder passed and runs here (the reasons are listed).

    Examples:
        >>> path, why, options = choose_artefact("runs/converted", "x86-64-avx2")  # doctest: +SKIP
        >>> path.name, why.split(":")[0]  # doctest: +SKIP
        ('model.int8.onnx', 'model.int8.onnx (onnxruntime, int8)')
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    candidates, skipped = [], []
    order = backend_names()
    from cellsdk.platform.gpu import gpu_device_kind, gpu_identity

    gpu = gpu_device_kind(device)  # "gpu" is OpenVINO's Intel GPU: not filtered
    gpu_name = (gpu_identity(str(device)) or {}).get("gpu") if gpu else None
    for entry in manifest["artefacts"]:
        file = str(entry["file"])
        status = entry.get("status", "unknown")
        if status != STATUS_PASSED:
            skipped.append(f"{file}: {status}")
            continue
        try:
            backend = get_backend(entry["backend"]) if entry.get("backend") else backend_for_path(file)
        except UnsupportedFormatError as err:
            skipped.append(f"{file}: {err}")
            continue
        reason = backend.unavailable_reason()
        if reason is not None:
            skipped.append(f"{file}: {reason}")
            continue
        if gpu and ("tensorrt" if gpu == "tensorrt" else "cuda") not in backend.devices:
            skipped.append(f"{file}: {backend.name} does not run on {device}")
            continue
        if not artefact_path(folder, file).exists():
            skipped.append(f"{file}: listed but missing")
            continue
        if gpu:
            on_gpu = _gpu_status(entry, gpu, gpu_name)
            if on_gpu == "failed":
                skipped.append(f"{file}: failed verification on this GPU ({gpu_name}, {gpu})")
                continue
            class_status = on_gpu
        else:
            class_status = _class_status(entry, cpu_class)
        if class_status == "failed":
            skipped.append(f"{file}: int8 verification failed on this CPU class {cpu_class}")
            continue
        latency = entry.get("latency_ms")
        latency = float(latency) if isinstance(latency, (int, float)) and not gpu else math.inf
        precision_rank = (_GPU_PRECISION_RANK if gpu else _PRECISION_RANK).get(str(entry.get("precision")), 3)
        rank = (class_status != "verified", False, latency, precision_rank, order.index(backend.name))
        options = entry.get("runtime_options") if isinstance(entry.get("runtime_options"), dict) else {}
        candidates.append((rank, file, backend.name, entry.get("precision", "?"), options))
    if not candidates:
        details = "; ".join(skipped) or "no artefacts"
        raise UnsupportedFormatError(f"{folder}: no verified artefact runs on this platform ({details})")
    measured: dict[str, dict[str, float]] = {}
    if measure and not gpu:
        candidates, measured = _measured(folder, manifest, candidates)
    (unverified_here, _, latency, _, _), file, backend_name, precision, options = min(candidates, key=lambda c: c[0])
    if gpu:
        if unverified_here:
            why = (f"runs on {device}, preferred by precision (fp16, fp32, int8) and backend; cellsdk verified it on "
                   f"CPUs, not on this GPU (cellsdk verify {file} --device {device} records that check)")
        else:
            why = (f"verified on this GPU ({gpu_name}, {gpu}), preferred among those by precision (fp16, fp32, int8) "
                   "and backend")
        return artefact_path(folder, file), f"{file} ({backend_name}, {precision}): {why}", dict(options)
    if file in measured:
        others = ", ".join(f"{other} {record['per_image_ms']:.2f}" for other, record in sorted(
            measured.items(), key=lambda item: item[1]["per_image_ms"]) if other != file)
        why = (f"fastest verified artefact measured on this machine ({measured[file]['per_image_ms']:.2f} ms per image"
               f"{'; ' + others if others else ''})")
    elif math.isfinite(latency):
        why = f"fastest verified artefact that runs here ({latency:.2f} ms at conversion)"
    else:
        why = "verified, runs here, preferred by precision and backend (no latency recorded)"
    if unverified_here:
        why += f"; not verified on this CPU class {cpu_class}"
    return artefact_path(folder, file), f"{file} ({backend_name}, {precision}): {why}", dict(options)


def _measured(folder: Path, manifest: dict[str, Any], candidates: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The candidates re-ranked by their speed measured here (:mod:`cellsdk.artefacts.speed`): among those verified
    for this CPU class, the ONNX Runtime and OpenVINO ones are timed; the others rank after them."""
    from cellsdk.artefacts.speed import MEASURED_BACKENDS, MEASURED_MOST, measure_speeds

    verified = [c for c in candidates if not c[0][0]]
    # the three fastest as recorded (fp16 on a CPU, say, is not worth a second of every first load)
    timed = sorted((c for c in verified if c[2] in MEASURED_BACKENDS), key=lambda c: c[0])[:MEASURED_MOST]
    if len(timed) < 2:  # nothing to choose between
        return candidates, {}
    size = ((manifest.get("metadata") or {}).get("preprocessing") or {}).get("input_size")
    if not isinstance(size, int) or not 0 < size <= 4096:  # a manifest without it keeps the recorded ranking
        return candidates, {}
    speeds = measure_speeds(folder / MANIFEST_NAME, [(c[1], c[2], c[4]) for c in timed], size,
                            lambda file: artefact_path(folder, file))
    if not speeds:
        return candidates, {}
    ranked = []
    for rank, file, backend_name, precision, options in candidates:
        latency = speeds[file]["per_image_ms"] if file in speeds else rank[2]  # unmeasured: after, as recorded
        ranked.append(((rank[0], file not in speeds, latency, *rank[3:]), file, backend_name, precision, options))
    return ranked, speeds


def _gpu_status(entry: dict[str, Any], target: str, gpu_name: str | None) -> str:
    """``verified``, ``failed`` or ``unverified`` for an entry on ``target`` (cuda / tensorrt) and this GPU model."""
    records = [r for r in entry.get("gpu_verification") or [] if isinstance(r, dict)
               and r.get("target") == target and gpu_name is not None and r.get("gpu") == gpu_name]
    if any(r.get("status") == "failed" for r in records):
        return "failed"
    return "verified" if any(r.get("status") == "passed" for r in records) else "unverified"


def _class_status(entry: dict[str, Any], cpu_class: str | None) -> str:
    """``verified``, ``failed`` or ``unverified`` for an entry on ``cpu_class`` (float artefacts: verified)."""
    from cellsdk.artefacts.cpu_records import NOT_APPLICABLE, VERIFIED, class_status

    if cpu_class is None:
        return VERIFIED
    quantization = entry.get("quantization") if isinstance(entry.get("quantization"), dict) else None
    status = class_status(str(entry.get("precision")), quantization, entry.get("cpu_verification") or [], cpu_class)
    return VERIFIED if status == NOT_APPLICABLE else status

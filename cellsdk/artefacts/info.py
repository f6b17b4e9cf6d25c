"""What a model says about itself: metadata of any artefact, its CPU-class record, and a folder's manifest.

Behind ``cellsdk info``. Checkpoints are read without torch; other artefacts
through the backend that loads them (a TorchScript archive needs torch);
a conversion folder is summarised from its ``manifest.json``.

Examples:
    >>> print(describe(default_model_path()).splitlines()[0])  # doctest: +SKIP
    bloodmnist_effnet_lite0_128.int8.onnx: tf_efficientnet_lite0, int8, 8 classes, input 128 px
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cellsdk._table import text_table
from cellsdk.artefacts.checkpoints import CHECKPOINT_SUFFIX, read_checkpoint_metadata
from cellsdk.artefacts.cpu_records import check_artefact
from cellsdk.errors import MetadataError, ModelNotFoundError
from cellsdk.metadata import ModelMetadata
from cellsdk.platform.cpu import host_cpu

__all__ = ["describe", "format_cpu_records", "format_gpu_records", "metadata_json", "read_metadata"]


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The cellsdk metadata of a checkpoint or of any artefact ``Classifier.load`` reads.

    Raises:
        CellSDKError: ModelNotFoundError, UnsupportedFormatError, CheckpointError, MetadataError or
            BackendNotInstalledError, each saying what to do.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> read_metadata(default_model_path()).precision
        'int8'
    """
    from cellsdk.backends import backend_for_path

    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such model file or folder")
    if path.suffix.lower() == CHECKPOINT_SUFFIX:
        return read_checkpoint_metadata(path)
    from cellsdk.artefacts.bioimageio import is_package, open_package

    if is_package(path):  # the weights' own metadata, else what the package's description says
        package = open_package(path)
        if not backend_for_path(package.weights).read_metadata_json(package.weights):
            return package.derived_metadata(path)
        path = package.weights
    document = backend_for_path(path).read_metadata_json(path)
    if not document:
        raise MetadataError(f"{path}: carries no cellsdk metadata (a model not written by cellsdk-convert)")
    try:
        return ModelMetadata.from_json(document)
    except MetadataError as err:
        raise MetadataError(f"{path}: {err}") from None


def metadata_json(path: str | os.PathLike) -> str:
    """The metadata document of a checkpoint or any artefact as indented JSON, arrays shown as dtype and shape
    (``cellsdk info --json``).

    Examples:
        >>> import json
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> json.loads(metadata_json(default_model_path()))["precision"]
        'int8'
    """
    import json

    from cellsdk.arrays import without_arrays

    return json.dumps(without_arrays(read_metadata(path).to_dict()), indent=2, sort_keys=True)


def format_cpu_records(records: Any) -> list[str]:
    """The CPU-class verification records as table lines (empty list when there are none).

    Examples:
        >>> format_cpu_records([{"target": "native", "cpu_class": "x86-64-avx2", "status": "passed"}])[1].split()[:3]
        ['native', 'x86-64-avx2', '?']
    """
    records = list(records or [])
    if not records:
        return []
    rows = []
    for r in records:
        acc = f"{r['accuracy'] * 100:.2f}" if isinstance(r.get("accuracy"), (int, float)) else "-"
        delta = f"{r['accuracy_change'] * 100:+.2f}" if isinstance(r.get("accuracy_change"), (int, float)) else "-"
        worst = (f"{r['worst_class']} {r['worst_recall_change'] * 100:+.2f}" if "worst_class" in r else
                 "; ".join(r.get("reasons") or [])[:60])
        rows.append([r.get("target", "?"), r.get("cpu_class", "?"), r.get("method", "?"), r.get("images") or 0,
                     r.get("status"), acc, delta, worst])
    return text_table(["target", "CPU class", "method", "images", "status", "acc %", "Δacc", "worst class Δrecall"],
                      rows, align="lllrlrrl", indent="  ").splitlines()


def format_gpu_records(records: Any) -> list[str]:
    """The GPU verification records (``cellsdk verify --device cuda``) as table lines (empty list when there are none).

    Examples:
        >>> format_gpu_records([{"target": "cuda", "gpu": "NVIDIA H100", "status": "passed"}])[1].split()[:3]
        ['cuda', 'NVIDIA', 'H100']
    """
    records = list(records or [])
    if not records:
        return []

    def pct(r: dict[str, Any], name: str, signed: bool = False) -> str:
        value = r.get(name)
        if not isinstance(value, (int, float)):
            return "-"
        return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"

    rows = []
    for r in records:
        latency = f"{r['latency_ms']:.2f}" if isinstance(r.get("latency_ms"), (int, float)) else "-"
        worst = (f"{r['worst_class']} {r['worst_recall_change'] * 100:+.2f}" if "worst_class" in r else "")
        if r.get("reasons"):
            worst = (worst + "; " if worst else "") + "; ".join(r["reasons"])[:80]
        rows.append([r.get("target", "?"), r.get("gpu", "?"), r.get("driver") or "?", r.get("images") or 0,
                     r.get("status"), pct(r, "top1_agreement"), pct(r, "accuracy"), pct(r, "accuracy_change", True),
                     latency, worst])
    return text_table(["target", "GPU", "driver", "images", "status", "agree %", "acc %", "Δacc", "ms b1",
                       "worst class Δrecall"], rows, align="lllrlrrrrl", indent="  ").splitlines()


def _lighter_lines(training: dict[str, Any]) -> list[str]:
    """How the model was made lighter or better: its pruning and distillation records, one line each."""
    lines = []
    pruning = training.get("pruning")
    if isinstance(pruning, dict) and pruning.get("macs_before"):
        lines.append(f"pruned: {pruning['macs_before'] / 1e9:.3f} -> {pruning['macs_after'] / 1e9:.3f} GMAC "
                     f"({pruning['macs_after'] / pruning['macs_before'] * 100:.0f} %), "
                     f"{pruning['params_before'] / 1e6:.2f} -> {pruning['params_after'] / 1e6:.2f} M parameters, "
                     f"fine-tuned {pruning.get('fine_tuned_epochs', 0)} epochs ({pruning.get('method', '?')})")
    distillation = training.get("distillation")
    if isinstance(distillation, dict) and distillation.get("teachers"):
        teachers = ", ".join(f"{t.get('arch', '?')} at {t.get('input_size', '?')} px" for t in distillation["teachers"])
        lines.append(f"distilled from {len(distillation['teachers'])} teacher(s): {teachers} (weight "
                     f"{distillation.get('weight')}, temperature {distillation.get('temperature')})")
    return lines


def describe(path: str | os.PathLike) -> str:
    """A human summary of a checkpoint, an artefact or a conversion folder, with its CPU-class record.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> print(describe(default_model_path()).splitlines()[1])
        labels: basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte, neutrophil, platelet
    """
    path = Path(path)
    from cellsdk.artefacts.bioimageio import is_package

    if is_package(path):
        return _describe_package(path)
    if path.is_dir() and path.suffix.lower() != ".mlpackage":
        return _describe_folder(path)
    meta = read_metadata(path)
    pre = meta.preprocessing
    lines = [f"{path.name}: {meta.arch}, {meta.precision}, {meta.num_classes} classes, input {pre.input_size} px",
             f"labels: {', '.join(meta.labels)}",
             f"preprocessing: {pre.describe()}",
             f"output: {meta.output}; schema {meta.schema_version}, written by cellsdk {meta.cellsdk_version}"]
    if meta.quantization:
        q = meta.quantization
        recipe = f"{q.get('recipe', 'unrecorded')} recipe: " if q.get("recipe") else "recipe not recorded: "
        lines.append(f"quantization: {recipe}{q.get('method', '?')}; {q.get('weights', '')}".rstrip("; "))
        if q.get("portability"):
            lines.append(f"  portability: {q['portability']}")
    if meta.source_checkpoint_sha256:
        lines.append(f"source checkpoint sha256: {meta.source_checkpoint_sha256}")
    if meta.reference_metrics:
        ref = meta.reference_metrics
        lines.append("fp32 reference: " + ", ".join(f"{k} {v * 100:.2f} %" for k, v in ref.items()))
    lines += _lighter_lines(meta.training or {})
    if path.suffix.lower() == CHECKPOINT_SUFFIX:
        return "\n".join(lines)
    from cellsdk.guard import guard_summary

    lines.append(f"OOD guard: {guard_summary(meta.guard)}")
    records = format_cpu_records(meta.cpu_verification)
    lines.append("verified on CPU classes:" if records else "verified on CPU classes: none recorded")
    lines.extend(records)
    gpu_records = format_gpu_records(meta.gpu_verification)
    lines.append("verified on NVIDIA GPUs:" if gpu_records else
                 "verified on NVIDIA GPUs: none recorded (cellsdk verify --device cuda on one records it)")
    lines.extend(gpu_records)
    lines.append(_this_machine(meta, path.name))
    lines.extend(_self_check_lines(meta, path))
    return "\n".join(lines)


def _describe_package(path: Path) -> str:
    """A bioimage.io package: what it is, then the weights cellsdk runs (or what its description says)."""
    from cellsdk.artefacts.bioimageio import open_package
    from cellsdk.backends import backend_for_path

    package = open_package(path)
    description = package.description
    header = (f"{path.name}: bioimage.io package {package.name!r} (format {description.get('format_version', '?')}; "
              f"weights {', '.join(description.get('weights') or {})}); cellsdk runs {package.weights.name}")
    if backend_for_path(package.weights).read_metadata_json(package.weights):
        return header + "\n" + describe(package.weights)
    meta = package.derived_metadata(path)
    return "\n".join([header, f"labels: {', '.join(meta.labels)}",
                      f"preprocessing (from the description): {meta.preprocessing.describe()}",
                      f"output: {meta.output}; no cellsdk metadata (no OOD guard, no verification records); its own "
                      "test tensors are checked on every load"])


def _self_check_lines(meta: ModelMetadata, path: Path) -> list[str]:
    """The test vectors the artefact carries and the self-check verdicts cached for this user, per machine key."""
    from cellsdk.artefacts.selfcheck import cached_verdicts

    vectors = meta.test_vectors
    if vectors is None:
        return ["test vectors: none (no self-check; re-convert, or cellsdk verify MODEL --reference CHECKPOINT "
                "--data DATA embeds them)"]
    images = vectors.get("images") or []
    lines = [f"test vectors: {len(images)} images ({sum(int(i.get('bytes', 0)) for i in images) / 1e3:.0f} KB of "
             "image bytes) with the fp32 reference's outputs"]
    verdicts = cached_verdicts(path)
    if not verdicts:
        lines.append("self-check on this machine: not run yet (Classifier.load runs it; cellsdk verify MODEL --self)")
    for verdict in verdicts:
        m = verdict.machine
        where = m.get("cpu_class") or m.get("gpu")
        lines.append(f"self-check cached: {where}, {m.get('runtime')} {m.get('runtime_version')}, {m.get('device')}: "
                     f"{verdict.describe()} [{verdict.checked_at}]")
    return lines


def _this_machine(meta: ModelMetadata, name: str) -> str:
    check = check_artefact(meta, name)
    verdict = {"verified": "verified on this class", "not applicable":
               "float artefact: no CPU-class-dependent arithmetic"}.get(check.status, check.message)
    return f"this machine: {host_cpu().describe()}: {verdict}"


def _describe_folder(folder: Path) -> str:
    from cellsdk.artefacts.manifest import choose_artefact, read_manifest

    manifest = read_manifest(folder)
    host = host_cpu()
    lines = [f"{folder}: conversion folder, {len(manifest['artefacts'])} artefacts "
             f"(source sha256 {manifest.get('source_checkpoint', {}).get('sha256', '?')})"]
    rows = []
    for entry in manifest["artefacts"]:
        classes = ", ".join(f"{r.get('target', '?')} ({str(r.get('cpu_class', '?')).replace('x86-64-', '')}) "
                            f"{r.get('status')}"
                            for r in entry.get("cpu_verification") or []) or "no CPU-class record"
        classes += "".join(f", {r.get('target', '?')} ({r.get('gpu', '?')}) {r.get('status')}"
                           for r in entry.get("gpu_verification") or [])
        rows.append([entry["file"], entry.get("precision", "?"), entry.get("status"), classes])
    lines += text_table(["artefact", "precision", "status", "verified on"], rows, indent="  ").splitlines()
    try:
        _, why, _ = choose_artefact(folder, host.cpu_class)
        lines.append(f"this machine ({host.describe()}) runs {why}")
    except Exception as err:  # noqa: BLE001 - a summary still prints when nothing runs here
        lines.append(f"this machine ({host.describe()}): {err}")
    return "\n".join(lines)

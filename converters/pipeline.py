"""``cellsdk-convert``: checkpoint -> verified ONNX / TorchScript / OpenVINO / CoreML artefacts and a manifest.

Everything is built in a staging folder beside ``out`` and moved into place
at the end, so an output folder is always complete: a failed or interrupted
conversion leaves the old one (or none), and re-running replaces it cleanly.

Examples:
    >>> from cellsdk.converters import ConvertConfig, convert
    >>> result = convert("runs/a/best.safetensors", "runs/a/converted",
    ...                  ConvertConfig(precisions=("int8",), calib="data/bloodmnist_128", data_cropped=True))  # doctest: +SKIP
    >>> result.failed  # doctest: +SKIP
    []
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellsdk._capture import capture_tool_output
from cellsdk._io import (
    remove_on_terminate,
    sha256_file,
    write_json,
    write_text,
)
from cellsdk._progress import progress_bar
from cellsdk._validate import require_int
from cellsdk.arrays import without_arrays
from cellsdk.artefacts.manifest import MANIFEST_NAME, STATUS_FAILED, STATUS_PASSED
from cellsdk.converters.base import Refused, converter_names, get_converter
from cellsdk.converters.calibration import ImageSet, calibration_set, evaluation_set
from cellsdk.converters.emulation import qemu_binary
from cellsdk.converters.files import (
    describe_files,
    failed_entry,
    remove_artefact,
    staging_dir,
    swap_into_place,
)
from cellsdk.converters.gate import VerifyConfig, reference_logits, sample_warnings, verify_artefact
from cellsdk.converters.guard import GuardConfig, GuardProbe, fit_guard, originals_note
from cellsdk.converters.int8 import check_recipe
from cellsdk.converters.labs import LabSource, check_labs, with_lab_cells
from cellsdk.converters.report import format_manifest_table
from cellsdk.converters.targets import CpuTargets, verify_on_targets
from cellsdk.converters.testvectors import build as build_test_vectors
from cellsdk.converters.testvectors import fit as fit_test_vectors
from cellsdk.errors import CellSDKError, ConfigError
from cellsdk.explain import CAMS_OUTPUT
from cellsdk.metadata import PRECISIONS, SCHEMA_VERSION
from cellsdk.metrics import classification_report, softmax
from cellsdk.platform.cpu import host_cpu
from cellsdk.platform.machine import machine_info, package_versions
from cellsdk.testvectors import size_budget

__all__ = ["BACKEND_OF", "ConversionResult", "ConvertConfig", "convert", "describe_files", "format_manifest_table"]

log = logging.getLogger("cellsdk.converters")

#: the file in a conversion folder that keeps what third-party tools printed during the conversion
TOOL_LOG = "conversion.log"

BACKEND_OF = {"onnx": "onnxruntime", "torchscript": "torchscript", "openvino": "openvino", "coreml": "coreml",
              "litert": "litert", "executorch": "executorch"}
_TOOLS = ("torch", "timm", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "coremltools", "numpy", "pillow")


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert, with which data, and how strictly to verify it.

    Attributes:
        formats: formats to write (default every registered one).
        precisions: extra precisions (``fp16``, ``int8``; CoreML also ``int6``, ``int4`` palettization).
            Each format always writes its baseline too (fp32; CoreML fp16).
        calib: dataset for int8 calibration (its train split).
        eval: dataset for verification (default: ``calib``); ``eval_split`` of it is used.
        eval_split: split of ``eval`` used by the gate.
        eval_limit: cap on verification images (stratified sample), None for the whole split.
        calib_samples: calibration images (stratified by class, seeded).
        seed: sampling seed.
        data_cropped: the dataset images already have the model's crop.
        labels: the datasets' class names, if their folders do not give them.
        input_size: export at another input size than the checkpoint's.
        dynamic_batch: make the batch dimension dynamic (the default: batched inference, and batch 1 is as fast
            as a static model's); False fixes it at 1.
        verify: the gate's thresholds.
        force_calib: accept too few calibration images or ones that overlap evaluation.
        int8_recipe: ``portable`` (safe on every CPU class, the default) or ``vnni`` (full 8-bit weights,
            exact only on CPUs with VNNI / AMX or without AVX2); see :mod:`cellsdk.converters.int8`.
        cpu_targets: the CPU classes every artefact is verified on (default: this machine, emulated Haswell
            and Nehalem; int8 artefacts under emulation); see :mod:`cellsdk.converters.targets`.
        guard: the out-of-distribution guard fitted into every artefact (``GuardConfig.off()``: none); it is
            fitted on the train and val splits of ``calib`` (else ``eval``); see :mod:`cellsdk.converters.guard`.
        explain: give every artefact a ``cams`` output (class activation maps, for ``Classifier.explain``) when
            the model's head is global pooling -> linear; other heads are converted without it, with a note.
        test_vectors: held-out images every artefact carries for its self-check on other machines (at most this
            many, within min(10 %, 400 KB) of the artefact; 0: none); see :mod:`cellsdk.artefacts.selfcheck`.
        labs: more sources (other labs, :class:`cellsdk.converters.labs.LabSource`) the guard is fitted over
            beside ``calib``, and every artefact is checked on, lab by lab, on their held-out cells.
    """

    formats: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    calib: str | None = None
    eval: str | None = None
    eval_split: str = "val"
    eval_limit: int | None = None
    calib_samples: int = 256
    seed: int = 0
    data_cropped: bool = False
    labels: str | None = None
    input_size: int | None = None
    dynamic_batch: bool = True
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    force_calib: bool = False
    int8_recipe: str = "portable"
    cpu_targets: CpuTargets = field(default_factory=CpuTargets)
    guard: GuardConfig = field(default_factory=GuardConfig)
    explain: bool = True
    test_vectors: int = 32
    labs: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        check_recipe(self.int8_recipe)
        for fmt in self.formats:
            get_converter(fmt)  # raises ConfigError naming the known formats
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ConfigError(f"unknown precision {', '.join(unknown)}: use fp32, fp16, int8 (CoreML also int6, int4)")
        if self.input_size is not None and not 8 <= self.input_size <= 4096:
            raise ConfigError(f"input size {self.input_size} is out of range 8..4096")
        require_int("seed", self.seed, minimum=0, maximum=2**32 - 1)
        require_int("calib_samples", self.calib_samples, minimum=1)
        require_int("eval_limit", self.eval_limit, minimum=1, optional=True)
        require_int("test_vectors", self.test_vectors, minimum=0, maximum=1000)


@dataclass
class ConversionResult:
    """The manifest and where it was written."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Artefacts whose status is failed."""
        return [a for a in self.manifest["artefacts"] if a["status"] == STATUS_FAILED]


def _plan(config: ConvertConfig) -> list[tuple[str, str, str]]:
    """(format, precision, reason-if-skipped) for every requested combination."""
    plan: list[tuple[str, str, str]] = []
    for fmt in config.formats or converter_names():
        converter = get_converter(fmt)
        wanted = [converter.baseline, *[p for p in config.precisions if p != converter.baseline]]
        missing = converter.missing_packages()
        if missing and config.formats:  # a format asked for by name must be installable
            converter.check_installed()
        for precision in dict.fromkeys(wanted):
            if missing:  # "all" means every format this machine can write; the rest are listed, not dropped
                plan.append((fmt, precision, f"{', '.join(missing)} not installed: {converter.install}"))
            elif precision in converter.precisions:
                plan.append((fmt, precision, ""))
            else:
                plan.append((fmt, precision, f"{fmt} has no {precision} path (it writes {', '.join(converter.precisions)})"))
    return plan


def convert(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, config: ConvertConfig | None = None, *,
            progress: bool = True) -> ConversionResult:
    """Convert a checkpoint to every requested format and precision, verify each, write the manifest.

    Raises:
        CheckpointError, ConfigError, DatasetError, BackendNotInstalledError: before anything is written.

    Examples:
        >>> convert("best.safetensors", "converted", ConvertConfig(eval="data"))  # doctest: +SKIP
    """
    from cellsdk.converters.base import ExportJob
    from cellsdk.training.checkpoint import load_checkpoint

    config = config or ConvertConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    plan = _plan(config)
    wants_int8 = any(p in ("int8",) and not skip for _, p, skip in plan)
    eval_source = config.eval or config.calib
    if eval_source is None:
        raise ConfigError("verification needs real held-out images: pass --eval DATA (or --calib DATA, whose "
                          "validation split is then used)")
    if wants_int8 and config.calib is None:
        raise ConfigError("int8 needs calibration images: pass --calib DATA (its train split is sampled)")
    if config.guard.enabled and config.guard.originals:  # refused now, not after the export
        from cellsdk.converters.guard import check_originals

        check_originals(config.guard.originals, config.labels)
    model, metadata = load_checkpoint(checkpoint)
    checkpoint_sha = sha256_file(checkpoint)
    preprocessing = metadata.preprocessing
    if config.input_size is not None:
        preprocessing = dataclasses.replace(preprocessing, input_size=config.input_size)
    metadata = metadata.replace(source_checkpoint_sha256=checkpoint_sha, preprocessing=preprocessing,
                                schema_version=SCHEMA_VERSION, cellsdk_version=package_versions(())["cellsdk"])
    images = evaluation_set(eval_source, metadata, split=config.eval_split, data_cropped=config.data_cropped,
                            labels=config.labels, limit=config.eval_limit, seed=config.seed)
    calibration: ImageSet | None = None
    if wants_int8 and config.calib is not None:  # (checked above: int8 needs --calib)
        calibration = calibration_set(config.calib, metadata, samples=config.calib_samples, seed=config.seed,
                                      data_cropped=config.data_cropped, labels=config.labels,
                                      exclude=images.ids, force=config.force_calib)
        if config.labs:  # an adapted model: the new labs' activations belong in the int8 ranges too
            calibration = with_lab_cells(calibration, config.labs, metadata)
    reference = reference_logits(model, images)
    reference_report = classification_report(images.targets, softmax(reference), metadata.labels)
    metadata = metadata.replace(reference_metrics={k: reference_report[k] for k in ("accuracy", "macro_f1",
                                                                                       "min_recall", "ece")})
    probe: GuardProbe | None = None
    if config.guard.enabled:
        from cellsdk.converters.shifts import SELECTION_SHIFTS

        guard_bar = progress_bar(2 + len(SELECTION_SHIFTS), "fit OOD guard", progress, unit="step")
        record, probe = fit_guard(model, metadata, str(config.calib or eval_source), config.guard,
                                  data_cropped=config.data_cropped, labels=config.labels, seed=config.seed,
                                  progress=lambda step: (guard_bar.set_postfix_str(step), guard_bar.update(1)),
                                  labs=config.labs)
        guard_bar.close()
        metadata = metadata.replace(outputs=("logits", "features"), guard=record)
    else:
        metadata = metadata.replace(outputs=("logits",), guard=None)
    explain_note = None
    if config.explain:
        from cellsdk.converters.heads import cam_support

        explain_note = cam_support(model, metadata.preprocessing.input_size)
        if explain_note is None:
            metadata = metadata.replace(outputs=(*metadata.outputs, CAMS_OUTPUT))
        else:
            log.info("cellsdk: no class activation maps in the artefacts (%s); Grad-CAM from the checkpoint "
                     "works in PyTorch: cellsdk.training.gradcam.grad_cam", explain_note)
    staging = staging_dir(out_dir)
    with remove_on_terminate(staging):  # SIGTERM in the CLI: removed, then exit (no unwinding through exporters)
        try:
            workdir = staging / ".work"
            workdir.mkdir()
            job = ExportJob(model=model, metadata=metadata, workdir=workdir, dynamic_batch=config.dynamic_batch,
                            calibration=calibration, int8_recipe=config.int8_recipe)
            if config.test_vectors:
                job.test_vectors = build_test_vectors(job, images, reference, config.verify.to_dict(),
                                                      data_cropped=config.data_cropped, count=config.test_vectors,
                                                      seed=config.seed)
            with capture_tool_output(staging / TOOL_LOG) as captured:  # exporters' and quantizers' chatter
                bar = progress_bar(len(plan), "convert + verify", progress, unit="artefact")
                artefacts: list[dict[str, Any]] = []
                outputs: dict[str, Any] = {}  # each verified artefact's outputs on the evaluation images
                for fmt, precision, skipped in plan:
                    bar.set_postfix_str(f"{fmt} {precision}")
                    artefacts.append(_one(job, fmt, precision, skipped, staging, images, reference, config, outputs,
                                          probe))
                    bar.update(1)
                bar.close()
                _verify_cpu_classes(job, artefacts, staging, images, reference, config, progress, outputs)
                lab_records = None
                if config.labs:  # each lab on its own held-out cells: the training lab's first
                    main = LabSource(str(config.calib or eval_source), config.data_cropped, config.labels,
                                     name=Path(str(config.calib or eval_source)).name)
                    lab_records = check_labs(
                        model, metadata, artefacts, staging, [main, *config.labs], config.verify,
                        metadata_for=lambda entry: _artefact_metadata(job, entry).replace(
                            cpu_verification=tuple(entry.get("cpu_verification") or ())))
            if captured.lines:
                log.info("cellsdk: %s", captured.summary().replace(str(staging), str(out_dir)))
            shutil.rmtree(workdir)
            manifest = {
                "cellsdk_manifest": 1,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source_checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha},
                "metadata": without_arrays(metadata.to_dict()),
                "reference": {"model": "PyTorch eager fp32 (the source checkpoint)", **metadata.reference_metrics},
                "evaluation": {**images.record(), "warnings": sample_warnings(images.targets, metadata.labels,
                                                                         config.verify)},
                "calibration": None if calibration is None else {**calibration.record(), "list": "calibration_images.txt"},
                "thresholds": config.verify.to_dict(),
                "cpu_targets": {"requested": list(config.cpu_targets.names), "host": host_cpu().to_dict(),
                                "emulator": qemu_binary(), "images_per_class": config.cpu_targets.images_per_class,
                                "float_artefacts_emulated": config.cpu_targets.float_artefacts},
                "test_vectors": None if job.test_vectors is None else {
                    "images": len(job.test_vectors), "ids": list(job.test_vectors.ids),
                    "preprocessing": job.test_vectors.preprocessing,
                    "note": "each artefact carries the first test_vectors.images of these (its size budget)"},
                "explanations": {"output": CAMS_OUTPUT, "method": "class activation maps (no gradients)"}
                            if CAMS_OUTPUT in metadata.outputs else
                            {"output": None, "reason": explain_note or "--no-explain"},
            "tools": package_versions(_TOOLS),
                "machine": machine_info(),
                "seconds": None,
                "tool_output": {"file": TOOL_LOG, "lines": captured.lines},
                "artefacts": artefacts,
            }
            if lab_records is not None:
                manifest["labs"] = lab_records
            if calibration is not None:
                write_text(staging / "calibration_images.txt", "\n".join(calibration.ids) + "\n")
            manifest["seconds"] = time.perf_counter() - started
            write_json(staging / MANIFEST_NAME, manifest)
            swap_into_place(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return ConversionResult(out_dir, manifest)


def _one(job: Any, fmt: str, precision: str, skipped: str, staging: Path, images: ImageSet, reference: Any,
         config: ConvertConfig, outputs: dict[str, Any], probe: GuardProbe | None) -> dict[str, Any]:
    converter = get_converter(fmt)
    entry: dict[str, Any] = {"file": converter.file_name(precision), "format": fmt, "backend": BACKEND_OF.get(fmt, fmt),
                             "precision": precision}
    if skipped:
        return {**entry, "status": "skipped", "reasons": [skipped]}
    target = staging / entry["file"]
    start = time.perf_counter()
    try:
        recipe = converter.convert(job, precision, target)
    except CellSDKError:
        raise
    except Refused as err:  # a known limit of the format's toolchain for this architecture: skipped, with why
        remove_artefact(target)
        return {**entry, "status": "skipped", "reasons": [str(err)], "convert_seconds": time.perf_counter() - start}
    except Exception as err:  # noqa: BLE001 - a converter's own failure fails its artefact, not the run
        return failed_entry(entry, target, "conversion failed", err, convert_seconds=time.perf_counter() - start)
    entry["convert_seconds"] = time.perf_counter() - start
    entry["quantization"] = recipe or None
    entry["size_bytes"], entry["sha256"], entry["files"] = describe_files(target)
    options = converter.verify_options(precision)
    if options:
        entry["runtime_options"] = options
    start = time.perf_counter()
    try:
        record = verify_artefact(target, precision, job.metadata_for(precision, recipe or None), images, reference,
                                 config.verify, options, outputs, guard_probe=probe, guard_config=config.guard)
    except CellSDKError:
        raise
    except Exception as err:  # noqa: BLE001 - the runtime refusing the converted file fails that artefact, not the run
        return failed_entry(entry, target, "the converted file does not run", err, verify_seconds=time.perf_counter() - start)
    entry["verify_seconds"] = time.perf_counter() - start
    entry["status"], entry["reasons"] = record.pop("status"), record.pop("reasons")
    if "latency_ms" in record:
        entry["latency_ms"] = record["latency_ms"]
    entry["verification"] = record
    threshold = (record.get("guard") or {}).get("threshold")
    if threshold is not None and entry["status"] == STATUS_PASSED:  # the artefact's own OOD threshold
        entry["guard_threshold"] = threshold
    if config.guard.enabled and config.guard.originals and entry["status"] == STATUS_PASSED:
        _originals_threshold(target, options, config, entry)
    vectors = fit_test_vectors(job.test_vectors, entry["size_bytes"])
    budget = size_budget(entry["size_bytes"])
    if vectors is not None and entry["status"] == STATUS_PASSED:  # its own OOD scores on them, and its self-check
        vectors, verdict = native_self_check(target, options, job.test_vectors, entry["size_bytes"])
        entry["self_check"] = {k: v for k, v in verdict.to_dict().items() if k not in ("cached", "source")}
        if verdict.failed:  # it would warn on every machine
            entry["status"] = STATUS_FAILED
            entry["reasons"] = [*entry["reasons"],
                                f"fails its own self-check on this machine: {'; '.join(verdict.reasons)}"]
    if vectors is not None:
        job.artefact_vectors[entry["file"]] = vectors
        entry["test_vectors"] = {"images": len(vectors), "bytes": vectors.nbytes(), "budget_bytes": budget,
                                 "artefact_bytes_without": entry["size_bytes"]}
    if "guard_threshold" in entry or vectors is not None:
        converter.write_metadata(target, _artefact_metadata(job, entry))
        entry["size_bytes"], entry["sha256"], entry["files"] = describe_files(target)
    return entry


def _originals_threshold(target: Path, options: dict[str, Any], config: ConvertConfig, entry: dict[str, Any]) -> None:
    """Raise the artefact's OOD threshold where needed to keep the stated share of the training lab's originals
    (``GuardConfig.originals``) through its own runtime path; recorded in its verification and metadata."""
    import warnings

    from cellsdk.classifier import Classifier
    from cellsdk.converters.guard import deployed_threshold
    from cellsdk.errors import CpuVerificationWarning

    with warnings.catch_warnings():  # a conversion writes its CPU records after every artefact is converted
        warnings.simplefilter("ignore", CpuVerificationWarning)
        classifier = Classifier.load(target, device="cpu", self_check=False, **options)
    if classifier.guard is None:
        return
    record = deployed_threshold(classifier, str(config.guard.originals), config.guard.retention,
                                base=entry.get("guard_threshold"), labels=config.labels)
    entry.setdefault("verification", {}).setdefault("guard", {})["originals"] = record
    entry["guard_threshold"] = record["threshold"]


def native_self_check(path: Path, options: dict[str, Any], vectors: Any, artefact_bytes: int) -> tuple[Any, Any]:
    """Run ``vectors`` through the artefact at ``path`` on this machine's CPU, as every machine will.

    Returns:
        The vectors that fit the artefact's budget, with its own OOD scores on them (the self-check elsewhere
        compares with these), and the verdict here on those vectors.
    """
    import time
    import warnings

    from cellsdk.artefacts.selfcheck import guard_scores, machine_key, run_vectors, verdict_for
    from cellsdk.classifier import Classifier
    from cellsdk.errors import CpuVerificationWarning

    with warnings.catch_warnings():  # a conversion writes its CPU records after every artefact is converted
        warnings.simplefilter("ignore", CpuVerificationWarning)
        classifier = Classifier.load(path, device="cpu", self_check=False, **options)
    started = time.perf_counter()
    outputs = run_vectors(classifier, vectors)
    full = vectors.with_expected(guard_scores(classifier.guard, outputs), machine_key(classifier))
    fitted = fit_test_vectors(full, artefact_bytes)  # a balanced prefix: the first len(fitted) outputs are its own
    if fitted is None:  # with its own scores not even one image fits
        from cellsdk.artefacts.selfcheck import UNAVAILABLE, SelfCheck

        return None, SelfCheck(UNAVAILABLE, machine_key(classifier))
    return fitted, verdict_for(classifier, fitted, {k: v[:len(fitted)] for k, v in outputs.items()}, started)


def _artefact_metadata(job: Any, entry: dict[str, Any]) -> Any:
    """The metadata an artefact carries: its precision and recipe, and its own OOD threshold if it has one."""
    metadata = job.metadata_for(entry["precision"], entry.get("quantization"))
    vectors = job.artefact_vectors.get(entry["file"])
    if vectors is not None:
        metadata = metadata.replace(test_vectors=vectors.to_dict())
    if entry.get("guard_threshold") is not None and metadata.guard is not None:
        checked = entry["verification"]["guard"]
        note = checked.get("threshold_note", "")
        originals = checked.get("originals")
        if originals and originals["threshold"] > originals["base_threshold"]:
            note = (f"{note}; " if note else "") + originals_note(originals)
        metadata = metadata.replace(guard={**metadata.guard, "threshold": entry["guard_threshold"],
                                           "fp32_threshold": metadata.guard["threshold"], "threshold_note": note,
                                           **({"originals": originals} if originals else {})})
    return metadata


def _verify_cpu_classes(job: Any, artefacts: list[dict[str, Any]], staging: Path, images: ImageSet, reference: Any,
                        config: ConvertConfig, progress: bool, outputs: dict[str, Any]) -> None:
    """Verify every checked artefact on the requested CPU classes; record it in the entry and in the artefact."""
    checked = [(entry, staging / entry["file"], _artefact_metadata(job, entry))
               for entry in artefacts if entry.get("status") in (STATUS_PASSED, STATUS_FAILED)
               and "verification" in entry]
    if not checked or not config.cpu_targets.names:
        return
    records = verify_on_targets(checked, images, reference, config.verify, config.cpu_targets, seed=config.seed,
                                progress=progress, native_outputs=outputs)
    for entry, path, expected in checked:
        found = records.get(entry["file"]) or []
        if not found:
            continue
        entry["cpu_verification"] = found
        for record in found:  # a failure natively is already in the reasons; add the other classes' failures
            if record["target"] != "native" and record["status"] == STATUS_FAILED and not any(
                    r["target"] == "native" and r["cpu_class"] == record["cpu_class"] and r["status"] == STATUS_FAILED
                    for r in found):
                entry["status"] = STATUS_FAILED
                entry["reasons"] = [*entry.get("reasons", []), f"failed on CPU class {record['cpu_class']} "
                                    f"({record['method']}): {'; '.join(record['reasons'][:2])}"]
        get_converter(entry["format"]).write_metadata(path, expected.replace(cpu_verification=tuple(found)))
        entry["size_bytes"], entry["sha256"], entry["files"] = describe_files(path)

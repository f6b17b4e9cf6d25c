"""Verify artefacts on CPU classes: the host natively, other classes under ``qemu-x86_64 -cpu MODEL``.

A check that passes on the machine that converted a model says nothing about
a machine of another CPU class (int8 without VNNI saturates, see
:mod:`cellsdk.converters.int8`). ``cellsdk-convert --verify-cpus
native,haswell,nehalem`` therefore runs each artefact's gate on each named
class:

* ``native``: this machine, on the whole evaluation set (the ordinary gate);
* any other name: a QEMU CPU model (``haswell`` = AVX2 without VNNI, ``nehalem``
  = SSE4.2 ...; see :data:`EMULATED`), emulated by ``qemu-x86_64`` (Debian
  package ``qemu-user``); or a 64-bit ARM CPU (``cortex-a72``: no dot product,
  Raspberry Pi 4 class; ``neoverse-n1``: dot product, Graviton2 / Jetson Orin
  class; ``arm64-max``: I8MM), run by ``qemu-aarch64`` with Debian's arm64 Python
  and PyPI's aarch64 wheels (the environment ``scripts/setup.sh`` builds, see
  :func:`arm64_environment`), in a private mount namespace whose
  ``/proc/cpuinfo`` describes the emulated ARM CPU (needs root and ``unshare``).
  Running under emulation is :mod:`cellsdk.converters.emulation`. A worker process runs the artefact through the
  same
  ``cellsdk.Classifier`` under emulation on a class-balanced sample of the
  evaluation images (up to ``images_per_class`` each, so per-class recall is
  still gated), the parent judges its outputs with the same gate. Where the
  native gate passed the artefact on the whole split, a reason this machine's run
  of the same artefact shows on the same sample too is the precision's doing,
  already judged there (on a sample of 16 per class one flipped cell is 6
  points): it is recorded as ``same_on_this_machine``, and only what the emulated
  class adds fails it. The worker
  reads the emulated CPU's features with CPUID, so the record says which class
  was really checked. Jobs run in parallel processes, with a progress bar.

QEMU's TCG cannot emulate AVX-512, so the AVX-512 / VNNI / AMX classes are
verified only by running natively on such a machine. Without ``qemu-x86_64``
the emulated classes are recorded as ``not verified on this platform`` with
the install command, never as passed.

Examples:
    >>> CpuTargets.parse("native,haswell").names
    ('native', 'haswell')
    >>> CpuTargets.parse("native,pentium4x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cellsdk.errors.ConfigError: unknown CPU class 'pentium4x' for --verify-cpus: use native, haswell, nehalem, ...
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._progress import progress_bar
from cellsdk._table import text_table
from cellsdk.artefacts.cpu_records import CLASS_SENSITIVE_PRECISIONS
from cellsdk.artefacts.manifest import STATUS_FAILED, STATUS_NOT_VERIFIED, STATUS_PASSED
from cellsdk.converters.emulation import (
    ARM64_TARGETS,
    EMULATED,
    QEMU_INSTALL,
    arm64_environment,
    cannot_run_there,
    emulator_name,
    qemu_binary,
    run_emulated,
    self_check_emulated,
)
from cellsdk.errors import ConfigError
from cellsdk.platform.cpu import host_cpu

__all__ = [
    "ARM64_TARGETS",
    "DEFAULT_TARGETS",
    "EMULATED",
    "QEMU_INSTALL",
    "CpuTargets",
    "arm64_environment",
    "balanced_sample",
    "emulator_name",
    "format_self_checks",
    "native_record",
    "qemu_binary",
    "run_emulated",
    "self_check_emulated",
    "self_check_everywhere",
    "unverified_notes",
    "verify_on_targets",
]

#: The default: this machine, one class without VNNI (AVX2) and one without AVX (SSE4.2).
DEFAULT_TARGETS = ("native", "haswell", "nehalem")


@dataclass(frozen=True)
class CpuTargets:
    """Which CPU classes to verify on, and how.

    Attributes:
        names: ``native`` and / or keys of :data:`EMULATED`.
        images_per_class: emulated checks use a class-balanced sample of at most this many images per class.
        float_artefacts: also check fp32 / fp16 artefacts under emulation (their arithmetic does not depend on
            the class beyond rounding; off by default, they are verified natively).
        workers: parallel emulated jobs (0: the number of cores).
        timeout_s: the longest one emulated job may take.
    """

    names: tuple[str, ...] = DEFAULT_TARGETS
    images_per_class: int = 50
    float_artefacts: bool = False
    workers: int = 0
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in self.names:
            if name != "native" and name not in EMULATED:
                known = ", ".join(["native", *EMULATED])
                raise ConfigError(f"unknown CPU class {name!r} for --verify-cpus: use {known}, or none")
        if self.images_per_class < 1:
            raise ConfigError(f"images per class for emulated checks must be >= 1, got {self.images_per_class}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")

    @classmethod
    def parse(cls, spec: str | Sequence[str], **options: Any) -> CpuTargets:
        """From ``"native,haswell"`` (or a list); ``"none"`` for no cross-class verification at all.

        Examples:
            >>> CpuTargets.parse("native,haswell").names
            ('native', 'haswell')
        """
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        names = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
        if names == ("none",):
            names = ()
        return cls(names=names, **options)

    @property
    def emulated(self) -> tuple[str, ...]:
        """The names that run under QEMU."""
        return tuple(n for n in self.names if n != "native")


def native_record(verification: dict[str, Any], status: str, reasons: list[str]) -> dict[str, Any]:
    """The ``native`` CPU record of an artefact, from its ordinary gate on this machine.

    Examples:
        >>> record = native_record({"images": 400, "accuracy": 0.99, "accuracy_change": 0.0}, "passed", [])
        >>> record["target"], record["status"]
        ('native', 'passed')
    """
    host = host_cpu()
    return {"target": "native", "cpu_class": host.cpu_class, "cpu": host.model, "features": list(host.features),
            "method": "native", "images": verification.get("images"), "sample": "the whole evaluation set",
            "status": status, "reasons": list(reasons), **_figures(verification)}


def _figures(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "accuracy_change", "macro_f1", "macro_f1_change", "min_recall", "top1_agreement",
            "worst_class", "worst_recall_change", "runtime", "runtime_version")
    return {k: record[k] for k in keys if k in record}


def balanced_sample(targets: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` images of each class, seeded, sorted.

    Examples:
        >>> balanced_sample(np.array([0, 0, 0, 1, 1, 2]), 2).tolist()
        [1, 2, 3, 4, 5]
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)


@dataclass
class _Job:
    file: str
    target: str
    path: Path
    precision: str
    options: dict[str, Any]
    expected: Any  # ModelMetadata


def verify_on_targets(jobs: list[tuple[dict[str, Any], Path, Any]], images: Any, reference: np.ndarray,
                      config: Any, targets: CpuTargets, *, seed: int = 0, progress: bool = True,
                      native_outputs: dict[str, np.ndarray] | None = None) -> dict[str, list[dict[str, Any]]]:
    """CPU records per artefact file: ``native`` from its gate, the emulated classes run here.

    Args:
        jobs: ``(manifest entry, artefact path, expected metadata)`` for every artefact that was verified natively.
        images: the evaluation :class:`~cellsdk.converters.calibration.ImageSet`.
        reference: the fp32 logits on ``images``.
        config: the gate's :class:`~cellsdk.converters.gate.VerifyConfig`.
        targets: the classes to verify on.
        native_outputs: each artefact's outputs on ``images`` from its native gate, by file name (those
            missing are run here on the emulated sample, to report agreement with this machine).

    Examples:
        >>> targets = CpuTargets.parse("native,haswell")
        >>> records = verify_on_targets(jobs, images, reference, VerifyConfig(), targets)  # doctest: +SKIP
        >>> [r["status"] for r in records["model.int8.onnx"]]  # doctest: +SKIP
        ['passed', 'passed']
    """
    records: dict[str, list[dict[str, Any]]] = {entry["file"]: [] for entry, _, _ in jobs}
    for entry, _, _ in jobs:
        if "native" in targets.names:
            records[entry["file"]].append(native_record(entry.get("verification") or {}, entry["status"],
                                                        entry.get("reasons") or []))
    emulated = [_Job(entry["file"], name, path, entry["precision"], entry.get("runtime_options") or {}, expected)
                for entry, path, expected in jobs for name in targets.emulated
                if targets.float_artefacts or entry["precision"] in CLASS_SENSITIVE_PRECISIONS]
    if not emulated:
        return records
    problems = {(job.file, job.target): cannot_run_there(job.target, job.path) for job in emulated}
    for job in emulated:
        if problems[job.file, job.target]:
            records[job.file].append(_not_verified(job.target, problems[job.file, job.target] or ""))
    emulated = [job for job in emulated if not problems[job.file, job.target]]
    if not emulated:
        return records
    passed_here = {entry["file"]: entry.get("status") == STATUS_PASSED for entry, _, _ in jobs}
    sample = balanced_sample(images.targets, targets.images_per_class, seed)
    sample_note = f"class-balanced, up to {targets.images_per_class} per class, seed {seed}"
    with tempfile.TemporaryDirectory(prefix="cellsdk-cpus-") as tmp:
        arrays = Path(tmp) / "images.npy"
        np.save(arrays, np.ascontiguousarray(images.arrays[sample]))
        native = {file: outputs[sample] for file, outputs in (native_outputs or {}).items()}
        missing = [job for job in emulated if job.file not in native]
        if missing:
            native.update(_native_outputs(missing, arrays))
        bar = progress_bar(len(emulated), "verify on CPU classes", progress, unit="check")
        workers = targets.workers or os.cpu_count() or 1
        from cellsdk.converters.gate import judge

        def run(job: _Job) -> dict[str, Any]:
            started = time.perf_counter()
            out = Path(tmp) / f"{job.file}.{job.target}.npz"
            error = run_emulated(job.path, job.options, job.target, arrays, out, targets.timeout_s)
            if error:
                result = {**_base(job.target), "status": STATUS_FAILED, "images": len(sample),
                          "reasons": [f"did not run under emulation: {error}"]}
            else:
                with np.load(out, allow_pickle=False) as data:
                    logits, info = data["logits"], json.loads(str(data["info"]))
                verdict = judge(logits, job.precision, job.expected, images.targets[sample], reference[sample], config)
                reasons = verdict.pop("reasons")
                shared: list[str] = []
                if job.file in native and reasons and passed_here[job.file]:
                    # what this machine's run of the same artefact shows on the same sample is the precision's doing,
                    # which the native gate passed on the whole split; only what this CPU class adds fails it here
                    host = judge(native[job.file], job.precision, job.expected, images.targets[sample],
                                 reference[sample], config)["reasons"]
                    shared = [r for r in reasons if r in host]
                    reasons = [r for r in reasons if r not in host]
                result = {**_base(job.target), "cpu_class": info["cpu_class"], "features": info["features"],
                          "images": len(sample), "sample": sample_note, "status": STATUS_FAILED if reasons
                          else STATUS_PASSED, "reasons": reasons, **_figures(verdict), "runtime": info["runtime"],
                          "runtime_version": info.get("runtime_version")}
                if job.file in native:
                    result["native_agreement"] = float((native[job.file].argmax(1) == logits.argmax(1)).mean())
                if shared:
                    result["same_on_this_machine"] = shared
            result["seconds"] = round(time.perf_counter() - started, 1)
            bar.set_postfix_str(f"{job.file} {job.target}")
            bar.update(1)
            return result

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(emulated)))) as pool:
            for job, result in zip(emulated, pool.map(run, emulated), strict=True):
                records[job.file].append(result)
        bar.close()
    return records


def _base(target: str) -> dict[str, Any]:
    model, cpu_class, _ = EMULATED[target]
    return {"target": target, "cpu_class": cpu_class, "cpu": f"QEMU {model} (emulated on "
            f"{host_cpu().model})", "features": [], "method": f"{emulator_name(target)} -cpu {model}"}


def _not_verified(target: str, why: str) -> dict[str, Any]:
    return {**_base(target), "status": STATUS_NOT_VERIFIED, "images": 0, "reasons": [why]}


def _native_outputs(jobs: list[_Job], arrays: Path) -> dict[str, np.ndarray]:
    """Each artefact's outputs on the sample here, to report how often the emulated class agrees with this one."""
    import warnings

    from cellsdk.classifier import Classifier

    batch, out = np.load(arrays), {}
    for job in {j.file: j for j in jobs}.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = Classifier.load(job.path, device="cpu", self_check=False, **job.options)
        out[job.file] = np.concatenate([clf.raw_outputs(batch[i:i + 64]) for i in range(0, len(batch), 64)])
    return out


def unverified_notes(artefacts: Iterable[dict[str, Any]]) -> list[str]:
    """One ``warning:`` line per reason a requested CPU class could not be verified (e.g. QEMU missing, with its
    install), over manifest entries (or anything with ``cpu_verification`` records).

    Examples:
        >>> unverified_notes([{"cpu_verification": [{"status": "not verified on this platform",
        ...                                          "reasons": ["qemu-x86_64 not found"]}]}])
        ['warning: CPU classes not verified: qemu-x86_64 not found']
    """
    reasons = {reason for a in artefacts for r in a.get("cpu_verification") or []
               if r.get("status") not in ("passed", "failed") for reason in r.get("reasons") or []}
    return [f"warning: CPU classes not verified: {reason}" for reason in sorted(reasons)]


def self_check_everywhere(model: str | os.PathLike, targets: Sequence[str] = ("native",), *,
                          device: str = "cpu") -> list[dict[str, Any]]:
    """``cellsdk verify MODEL --self``: the artefact's self-check run now, natively (the verdict is cached) and under
    each emulated CPU class of ``targets`` (e.g. ``haswell``, ``cortex-a72``); one row each.

    Raises:
        ConfigError: an unknown target, or MODEL carries no test vectors (how to add them).

    Examples:
        >>> [row["status"] for row in self_check_everywhere("model.int8.onnx", ["native", "haswell"])]  # doctest: +SKIP
        ['passed', 'passed']
    """
    import warnings

    from cellsdk.artefacts.selfcheck import self_check
    from cellsdk.classifier import Classifier

    names = [str(n).strip().lower() for n in targets if str(n).strip()]
    emulated = [n for n in names if n != "native"]
    if emulated:
        CpuTargets.parse(emulated)  # unknown names: one line naming the known ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the verdict below says it all
        classifier = Classifier.load(model, device=device, self_check=False)
    if classifier.metadata.test_vectors is None:
        raise ConfigError(f"{model} carries no test vectors (converted before metadata schema 5, or not by "
                          "cellsdk-convert): re-convert it, or embed them with cellsdk verify MODEL "
                          "--reference CHECKPOINT --data DATA")
    about = {"precision": classifier.metadata.precision,
             "vectors": len(classifier.metadata.test_vectors.get("images") or [])}
    rows: list[dict[str, Any]] = []
    if "native" in names or not names:
        verdict = self_check(classifier, refresh=True)
        rows.append({**verdict.to_dict(), "target": "native", "method": "native (verdict cached)", **about})
    for name in emulated:
        rows.append({**self_check_emulated(Path(model), name), **about})
    return rows


def format_self_checks(model: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> str:
    """:func:`self_check_everywhere`'s rows as the table ``cellsdk verify --self`` prints.

    Examples:
        >>> row = {"target": "native", "status": "passed", "precision": "int8", "vectors": 32, "seconds": 0.08,
        ...        "machine": {"cpu_class": "x86-64-avx2", "backend": "onnxruntime"}, "figures": {}}
        >>> format_self_checks("model.int8.onnx", [row]).splitlines()[0][:44]
        'model.int8.onnx: self-check, int8, 32 test v'
    """
    first = rows[0] if rows else {}
    lines = [f"{model}: self-check, {first.get('precision', '?')}, {first.get('vectors', 0)} test vectors "
             "(guard Δ: the OOD score's largest difference from fp32's, drift: from this artefact's own where its gate "
             "passed; both as a share of "
             "the spread of fp32's scores on the vectors)"]
    cells = []
    for row in rows:
        f, m = row.get("figures") or {}, row.get("machine") or {}
        where = m.get("cpu_class") or m.get("gpu") or "-"
        runtime = f"{m.get('backend', '-')} {m.get('runtime_version', '')} ({m.get('device', '-')})"
        guard = f"{f['guard_score_error'] * 100:.1f}%" if "guard_score_error" in f else "-"
        drift = f"{f['guard_drift'] * 100:.1f}%" if "guard_drift" in f else "-"
        numbers = ([f"{f['top1_agreement'] * 100:.1f}", f"{f['logit_cosine']:.5f}", f"{f['max_probability_error']:.4f}"]
                   if f else ["-", "-", "-"])
        reasons = "; ".join(row.get("reasons") or [])
        cells.append([row["target"], where, runtime, *numbers, guard, drift, f"{row.get('seconds', 0) * 1e3:.0f}",
                     row["status"] + (f" ({reasons})" if reasons else "")])
    lines += text_table(["target", "CPU class", "runtime (device)", "agree %", "logit cos", "max Δp", "guard Δ",
                         "drift", "ms", "status"], cells, align="lllrrrrrrl", indent="  ").splitlines()
    return "\n".join(lines)

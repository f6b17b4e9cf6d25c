"""The self-check: an artefact checks itself on the machine it lands on, the first time it runs there (torch-free).

A model is only "verified" for the machines someone had. Every artefact ``cellsdk-convert`` writes carries test
vectors (:mod:`cellsdk.testvectors`): real held-out images, as encoded bytes, with the fp32 reference's outputs
on them. ``Classifier.load`` runs them through the artefact — decoding, preprocessing, the runtime, the guard —
on every (CPU class or GPU model, runtime and its version, device, precision) the artefact has no record for, and
compares with the conversion gate's criteria (:func:`judge`): top-1 agreement, logit cosine, probability error,
the OOD guard's score, and the features' and class activation maps' cosine. The verdict is cached per user
(``$CELLSDK_CACHE`` or ``~/.cache/cellsdk``, ``selfcheck/``), keyed by the artefact's sha256 and the machine key
(:mod:`cellsdk.artefacts.verdicts`), so later loads cost a file read. A pass is silent; a failure warns once with the figures
(:class:`~cellsdk.errors.SelfCheckWarning`), ``strict=True`` refuses (:class:`~cellsdk.errors.SelfCheckError`),
``self_check=False`` turns it off.

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load()  # doctest: +SKIP
    >>> clf.self_check.status, clf.self_check.figures["top1_agreement"]  # doctest: +SKIP
    ('passed', 1.0)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsdk.artefacts.verdicts import (
    artefact_digest,
    cache_dir,
    key_text,
    machine_key,
    read_cache,
    runtime_version,
    write_cache,
)

if TYPE_CHECKING:
    from cellsdk.testvectors import TestVectors

__all__ = ["FAILED", "FLOAT_LIMITS", "OFF", "PASSED", "UNAVAILABLE", "FloatLimits", "SelfCheck", "SelfCheckConfig",
           "artefact_digest", "cache_dir", "cached_verdicts", "enforce_self_check", "guard_scores", "judge",
           "machine_key", "matching_record", "run_self_check", "run_vectors", "runtime_version", "self_check", "verdict_for"]

PASSED, FAILED, UNAVAILABLE, OFF = "passed", "failed", "unavailable", "off"
_ROUNDING = 1e-9
_WARNED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class FloatLimits:
    """How far a float artefact may be from fp32 on its vectors.

    Attributes:
        cosine: the smallest mean cosine of its logits, features and maps to fp32's.
        probability_error: the largest absolute difference of any class probability.
        guard_error: the largest difference of the OOD score, as a share of the spread of the reference's scores
            on the vectors.
    """

    cosine: float
    probability_error: float
    guard_error: float


#: Measured on the shipped model (Lite0, 128 px) and the suite's tiny model. fp32 computes like the reference up to
#: summation order (probabilities within 2e-6, OOD scores within 0.01 % of their spread); the same artefact computed
#: in bf16 (OpenVINO's default on BF16 CPUs) moves probabilities up to 0.0003-0.007 and scores 0.8-5.7 %: the fp32
#: limits sit between. fp16 weights (computed in f32 on CPUs, in fp16 on GPUs) move probabilities up to 0.0008 and
#: scores up to 0.7 %; its limits are those of the guard's format-parity test (2 % of the spread).
FLOAT_LIMITS = {"fp32": FloatLimits(cosine=0.9999, probability_error=0.002, guard_error=0.005),
                "fp16": FloatLimits(cosine=0.999, probability_error=0.02, guard_error=0.02)}


@dataclass(frozen=True)
class SelfCheckConfig:
    """The criteria: the conversion gate's (carried by the vectors) and the self-check's own.

    Attributes:
        min_agreement: fp32 / fp16 artefacts: smallest top-1 agreement with fp32 (the gate's, default 99.5 %:
            on 32 images every one must agree).
        min_quantized_agreement: int8 / bf16 ...: fail when the 95 % Wilson interval of the agreement lies wholly
            below this (the gate's rule; 0.98: on 32 images at most 2 may disagree).
        min_logit_cosine: int8 / bf16 ...: smallest mean cosine of the logits to fp32's (the gate's 0.98; correct
            int8 artefacts of the shipped model measure 0.996-0.9996, ones that saturate 0.95-0.96).
        max_quantized_probability_error: int8 ...: the mean over images of the largest probability difference
            (correct int8 artefacts: shipped model 0.002, the tiny test model 0.02-0.08).
        max_guard_drift: every precision: the largest difference of the OOD score from the artefact's own score
            where its gate passed (``expected_scores``), as a share of the spread of the reference's scores on the
            vectors. How far int8 moves the scores from fp32's depends on the quantizer (4-34 % of that spread for
            ONNX and OpenVINO int8 of the shipped and the tiny test model, 103 % for TorchScript FX int8 of the
            shipped one, all passing the gate's guard check), so the scores are compared with the artefact's own:
            a correct artefact computes the same integers on every class (portable int8: 0 %), a bf16 one run in
            f32 on a CPU without BF16 moves them up to 6 %, the full-range recipe under AVX2 by about 200 %.
        float_limits: fp32 / fp16 artefacts: :data:`FLOAT_LIMITS`.
    """

    min_agreement: float = 0.995
    min_quantized_agreement: float = 0.98
    min_logit_cosine: float = 0.98
    max_quantized_probability_error: float = 0.15
    max_guard_drift: float = 0.1
    float_limits: dict[str, FloatLimits] = field(default_factory=lambda: dict(FLOAT_LIMITS))

    @classmethod
    def from_gate(cls, thresholds: dict[str, float]) -> SelfCheckConfig:
        """The default criteria with the thresholds of the gate the artefact passed (stored in its vectors).

        Examples:
            >>> SelfCheckConfig.from_gate({"min_agreement": 0.99}).min_agreement
            0.99
        """
        return cls(min_agreement=float(thresholds.get("min_agreement", cls.min_agreement)),
                   min_quantized_agreement=float(thresholds.get("min_quantized_agreement",
                                                                cls.min_quantized_agreement)),
                   min_logit_cosine=float(thresholds.get("min_logit_cosine", cls.min_logit_cosine)))


@dataclass(frozen=True)
class SelfCheck:
    """A self-check's verdict on one machine.

    Attributes:
        status: ``passed``, ``failed``, ``unavailable`` (the artefact carries no test vectors) or ``off``.
        machine: the machine key (CPU class or GPU, runtime and its version, device, precision).
        images: how many test vectors ran.
        figures: the measured agreement, cosines, probability and guard-score errors.
        reasons: why it failed (empty when it passed).
        seconds: how long the check took when it ran.
        cached: whether this verdict was read from the cache instead of run.
        checked_at: when it ran (ISO 8601 UTC).
        source: ``self-check`` or ``record`` (the artefact carries a gate record for this machine key).
    """

    status: str
    machine: dict[str, Any] = field(default_factory=dict)
    images: int = 0
    figures: dict[str, float] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    seconds: float = 0.0
    cached: bool = False
    checked_at: str | None = None
    source: str = "self-check"

    @property
    def failed(self) -> bool:
        """True when the artefact failed its self-check here."""
        return self.status == FAILED

    def describe(self) -> str:
        """One phrase, e.g. ``self-check passed here (32 images, agreement 100.0 %, logit cosine 0.9991)``.

        Examples:
            >>> SelfCheck("failed", figures={"top1_agreement": 0.9, "logit_cosine": 0.95, "max_probability_error": 0.3},
            ...           images=32, reasons=("logit cosine 0.95",)).describe()[:46]
            'self-check FAILED here (32 images, agreement 9'
        """
        if self.status in (UNAVAILABLE, OFF):
            return {UNAVAILABLE: "no self-check (the artefact carries no test vectors: re-convert it)",
                    OFF: "self-check off"}[self.status]
        if self.source == "record":
            return "verified here by the conversion gate (a record for this CPU class and runtime)"
        f = self.figures
        if not f:
            return f"self-check {'FAILED' if self.failed else 'passed'} here: {'; '.join(self.reasons) or 'no figures'}"
        figures = (f"{self.images} images, agreement {f.get('top1_agreement', 0) * 100:.1f} %, logit cosine "
                   f"{f.get('logit_cosine', 0):.4f}, max probability error {f.get('max_probability_error', 0):.4f}")
        if "guard_score_error" in f:
            figures += f", guard score error {f['guard_score_error'] * 100:.1f} % of spread"
        head = f"self-check {'FAILED' if self.failed else 'passed'} here ({figures}"
        return head + (f"): {'; '.join(self.reasons)}" if self.reasons else ")")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what the cache, ``cellsdk info`` and the server's ``/v1/model`` show).

        Examples:
            >>> SelfCheck.from_dict(SelfCheck("passed", images=32).to_dict()).images
            32
        """
        return {"status": self.status, "machine": self.machine, "images": self.images, "figures": self.figures,
                "reasons": list(self.reasons), "seconds": self.seconds, "cached": self.cached,
                "checked_at": self.checked_at, "source": self.source}

    @classmethod
    def from_dict(cls, record: dict[str, Any], *, cached: bool = True) -> SelfCheck:
        """From :meth:`to_dict` (a cache entry).

        Examples:
            >>> SelfCheck.from_dict({"status": "passed", "images": 32}).cached
            True
        """
        return cls(str(record["status"]), dict(record.get("machine") or {}), int(record.get("images") or 0),
                   {str(k): float(v) for k, v in (record.get("figures") or {}).items()},
                   tuple(str(r) for r in record.get("reasons") or ()), float(record.get("seconds") or 0.0), cached,
                   record.get("checked_at"), str(record.get("source") or "self-check"))


def cached_verdicts(path: str | os.PathLike) -> list[SelfCheck]:
    """Every verdict cached for this artefact, on any machine key of this user (``cellsdk info`` shows them).

    Examples:
        >>> [v.status for v in cached_verdicts("model.int8.onnx")]  # doctest: +SKIP
        ['passed']
    """
    record = read_cache(artefact_digest(path))
    return [SelfCheck.from_dict(v) for v in record.get("verdicts", {}).values() if isinstance(v, dict)]


# --------------------------------------------------------------------------- running and judging

def run_vectors(classifier: Any, vectors: TestVectors) -> dict[str, np.ndarray]:
    """The artefact's outputs on its test vectors: decoded and preprocessed as the reference saw them, one batch.

    Raises:
        MetadataError: the vectors' images do not decode.

    Examples:
        >>> from cellsdk import Classifier
        >>> from cellsdk.testvectors import TestVectors
        >>> clf = Classifier.load(self_check=False)
        >>> run_vectors(clf, TestVectors.from_dict(clf.metadata.test_vectors))["logits"].shape
        (32, 8)
    """
    from cellsdk.errors import InvalidImageError, MetadataError
    from cellsdk.metadata import Preprocessing
    from cellsdk.preprocessing import load_image, prepare_image, to_input_array

    spec = Preprocessing.from_dict(vectors.preprocessing) if vectors.preprocessing else \
        classifier.metadata.preprocessing
    try:
        batch = np.stack([to_input_array(prepare_image(load_image(image, name=f"test vector {name}"), spec), spec)
                          for image, name in zip(vectors.images, vectors.ids, strict=True)])
    except InvalidImageError as err:
        raise MetadataError(f"{classifier.path}: its test vectors are damaged ({err}): re-convert it, or load it "
                            "with self_check=False") from None
    return {k: np.asarray(v, dtype=np.float64) for k, v in classifier.run_outputs(batch).items()}


def guard_scores(guard: Any, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """A guard's OOD scores for a model's outputs (None without a guard, or one whose features are missing).

    Examples:
        >>> guard_scores(None, {"logits": np.zeros((1, 2))}) is None
        True
    """
    if guard is None or (guard.needs_features and "features" not in outputs):
        return None
    return np.asarray(guard.scores(outputs["logits"], outputs.get("features")), dtype=np.float64)


def run_self_check(classifier: Any, vectors: TestVectors | None = None) -> SelfCheck:
    """Run the artefact's test vectors (or ``vectors``) through ``classifier`` here and judge them (no cache).

    Returns:
        The verdict (``unavailable`` when the artefact carries no vectors).

    Raises:
        MetadataError: the vectors are malformed.

    Examples:
        >>> from cellsdk import Classifier
        >>> verdict = run_self_check(Classifier.load(self_check=False))
        >>> verdict.status, verdict.images, verdict.cached
        ('passed', 32, False)
    """
    record = classifier.metadata.test_vectors
    if vectors is None and record is None:
        return SelfCheck(UNAVAILABLE, machine_key(classifier))
    from cellsdk.testvectors import TestVectors

    vectors = vectors or TestVectors.from_dict(record)
    started = time.perf_counter()
    return verdict_for(classifier, vectors, run_vectors(classifier, vectors), started)


def verdict_for(classifier: Any, vectors: TestVectors, outputs: dict[str, np.ndarray], started: float) -> SelfCheck:
    """Judge outputs :func:`run_vectors` gave (``started``: its ``time.perf_counter()`` at the start).

    Examples:
        >>> import time
        >>> from cellsdk import Classifier
        >>> from cellsdk.testvectors import TestVectors
        >>> clf = Classifier.load(self_check=False)
        >>> vectors = TestVectors.from_dict(clf.metadata.test_vectors)
        >>> verdict_for(clf, vectors, run_vectors(clf, vectors), time.perf_counter()).status
        'passed'
    """
    key = machine_key(classifier)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if outputs["logits"].shape != vectors.logits.shape:
        return SelfCheck(FAILED, key, len(vectors), {}, (
            f"the model gives {outputs['logits'].shape[1]} outputs per image, its test vectors "
            f"{vectors.logits.shape[1]} (labels or outputs overridden?)",), 0.0, False, now)
    figures, reasons = judge(outputs, vectors, classifier.metadata.precision, classifier.metadata.output,
                             classifier.guard, SelfCheckConfig.from_gate(vectors.thresholds))
    seconds = time.perf_counter() - started
    return SelfCheck(FAILED if reasons else PASSED, key, len(vectors), figures, tuple(reasons), round(seconds, 4),
                     False, now)


def judge(outputs: dict[str, np.ndarray], vectors: TestVectors, precision: str, output: str, guard: Any,
          config: SelfCheckConfig) -> tuple[dict[str, float], list[str]]:
    """The figures of an artefact's outputs on its vectors against the reference's, and why they fail.

    Examples:
        >>> from cellsdk.testvectors import TestVectors
        >>> reference = np.array([[2.0, 0.0], [0.0, 2.0]])
        >>> vectors = TestVectors((b"a", b"b"), ("image/png",) * 2, ("a", "b"), (0, 1), reference)
        >>> figures, reasons = judge({"logits": reference[:, ::-1]}, vectors, "fp32", "logits", None,
        ...                          SelfCheckConfig())
        >>> figures["top1_agreement"], reasons[0][:34]
        (0.0, 'top-1 agreement with fp32 0.00 % (')
    """
    from cellsdk.metrics import mean_cosine, softmax

    reference = vectors.outputs()
    quantized = precision not in ("fp32", "fp16")
    logits, ref = outputs["logits"], reference["logits"]
    probabilities = softmax(logits) if output == "logits" else logits
    ref_probabilities = softmax(ref) if output == "logits" else ref
    agreeing = int((probabilities.argmax(1) == ref_probabilities.argmax(1)).sum())
    n = len(ref)
    errors = np.abs(probabilities - ref_probabilities).max(axis=1)
    figures: dict[str, float] = {"top1_agreement": agreeing / n, "logit_cosine": mean_cosine(logits, ref),
                                 "max_probability_error": float(errors.max()),
                                 "mean_probability_error": float(errors.mean())}
    for name in ("features", "cams"):
        if name in reference and name in outputs:
            figures[f"{name}_cosine"] = mean_cosine(outputs[name], reference[name])
    reasons = []
    if quantized:
        from cellsdk.metrics import wilson_interval

        upper = wilson_interval(agreeing, n)[1]
        if upper < config.min_quantized_agreement - _ROUNDING:
            reasons.append(f"top-1 agreement with fp32 {agreeing / n * 100:.2f} % (95 % interval up to "
                           f"{upper * 100:.1f} %, below the {precision} limit {config.min_quantized_agreement * 100:.1f} %)")
        if figures["logit_cosine"] < config.min_logit_cosine - _ROUNDING:
            reasons.append(f"logit cosine similarity to fp32 {figures['logit_cosine']:.4f} "
                           f"(limit {config.min_logit_cosine:.4f})")
        if figures["mean_probability_error"] > config.max_quantized_probability_error + _ROUNDING:
            reasons.append(f"mean probability error {figures['mean_probability_error']:.4f} "
                           f"(limit {config.max_quantized_probability_error:.4f})")
    else:
        limits = config.float_limits[precision]
        if agreeing / n < config.min_agreement - _ROUNDING:
            reasons.append(f"top-1 agreement with fp32 {agreeing / n * 100:.2f} % ({n - agreeing} of {n} images "
                           f"differ; limit {config.min_agreement * 100:.2f} %)")
        for name in ("logit_cosine", "features_cosine", "cams_cosine"):
            if name in figures and figures[name] < limits.cosine - _ROUNDING:
                reasons.append(f"{name.replace('_', ' ')} to fp32 {figures[name]:.5f} (limit {limits.cosine})")
        if figures["max_probability_error"] > limits.probability_error + _ROUNDING:
            reasons.append(f"probability error {figures['max_probability_error']:.4f} "
                           f"(limit {limits.probability_error:.4f})")
    scores, ref_scores = guard_scores(guard, outputs), guard_scores(guard, reference)
    if scores is not None and ref_scores is not None:
        spread = float(np.ptp(ref_scores)) + 1e-12
        figures["guard_score_error"] = float(np.abs(scores - ref_scores).max() / spread)
        if n > 2 and np.std(scores) > 0 and np.std(ref_scores) > 0:
            figures["guard_correlation"] = float(np.corrcoef(scores, ref_scores)[0, 1])
        if not quantized and figures["guard_score_error"] > config.float_limits[precision].guard_error + _ROUNDING:
            reasons.append(f"OOD score differs from fp32's by {figures['guard_score_error'] * 100:.1f} % of its "
                           f"spread (limit {config.float_limits[precision].guard_error * 100:.1f} %)")
        if vectors.expected_scores is not None and len(vectors.expected_scores) == n:
            figures["guard_drift"] = float(np.abs(scores - vectors.expected_scores).max() / spread)
            if figures["guard_drift"] > config.max_guard_drift + _ROUNDING:
                where = vectors.expected_on.get("cpu_class") or vectors.expected_on.get("gpu") or "its conversion"
                reasons.append(f"OOD score differs from this artefact's own on {where} by "
                               f"{figures['guard_drift'] * 100:.1f} % of its spread (limit "
                               f"{config.max_guard_drift * 100:.1f} %)")
    return figures, reasons


def matching_record(classifier: Any, key: dict[str, Any]) -> dict[str, Any] | None:
    """A passed gate record the artefact carries for exactly this CPU class, runtime and version.

    Examples:
        >>> from cellsdk import Classifier
        >>> clf = Classifier.load(self_check=False)
        >>> matching_record(clf, machine_key(clf)) is None or True
        True
    """
    for record in classifier.metadata.cpu_verification:
        if record.get("status") == PASSED and record.get("cpu_class") == key.get("cpu_class") \
                and record.get("runtime") == key["runtime"] and record.get("runtime_version") == key["runtime_version"]:
            return record
    return None


def self_check(classifier: Any, *, refresh: bool = False) -> SelfCheck:
    """The artefact's verdict on this machine: from its own records, from the cache, or run now and cached.

    Args:
        classifier: a loaded :class:`~cellsdk.Classifier`.
        refresh: run the vectors even when a verdict is cached (``cellsdk verify MODEL --self``).

    Examples:
        >>> from cellsdk import Classifier
        >>> self_check(Classifier.load(self_check=False)).status
        'passed'
    """
    key = machine_key(classifier)
    if classifier.metadata.test_vectors is None:
        return SelfCheck(UNAVAILABLE, key)
    if not refresh and matching_record(classifier, key) is not None:
        return SelfCheck(PASSED, key, source="record", cached=True)
    digest, text = artefact_digest(classifier.path), key_text(key)
    if not refresh:
        found = read_cache(digest).get("verdicts", {}).get(text)
        if isinstance(found, dict):
            try:
                return SelfCheck.from_dict(found)
            except (KeyError, TypeError, ValueError):
                pass  # a damaged entry: run again
    verdict = run_self_check(classifier)
    write_cache(digest, Path(classifier.path).name, text, verdict.to_dict())
    return verdict


def enforce_self_check(verdict: SelfCheck, *, name: str, strict: bool, stacklevel: int = 3) -> None:
    """Nothing unless the artefact failed its self-check; then raise (``strict``) or warn once per artefact and key.

    Raises:
        SelfCheckError: ``strict`` and the self-check failed here.

    Examples:
        >>> enforce_self_check(SelfCheck(PASSED), name="m.onnx", strict=True) is None
        True
    """
    import warnings

    from cellsdk.errors import SelfCheckError, SelfCheckWarning

    if not verdict.failed:
        return
    where = verdict.machine.get("cpu_class") or verdict.machine.get("gpu") or "this machine"
    message = (f"{name}: {verdict.describe()} — on {where} with {verdict.machine.get('runtime')} "
               f"{verdict.machine.get('runtime_version')}, its answers differ from the model it was converted from")
    if strict:
        raise SelfCheckError(f"{message} (refused: strict mode)")
    key = (name, key_text(verdict.machine))
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{message}; use a fp32 artefact or re-convert it here; strict=True (--strict) refuses it",
                      SelfCheckWarning, stacklevel=stacklevel)

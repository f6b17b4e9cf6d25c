"""The verification gate: every artefact, loaded through ``cellsdk.Classifier``, against the fp32 PyTorch model.

Each artefact runs on the same held-out real images, preprocessed once, as
the fp32 reference. Recorded: top-1 agreement with fp32, accuracy and
macro-F1 and their change, the change of every class's recall, the largest
logit difference, and the model-only latency at batch 1. An artefact fails if
accuracy drops by more than ``max_accuracy_drop``, any class's recall by more
than ``max_recall_drop``, or (fp32 / fp16) top-1 agreement falls below
``min_agreement``. Quantized artefacts (int8, int6, int4) must also agree with
fp32 on their own, whatever the accuracy: they fail when the 95 % Wilson
interval of their top-1 agreement lies wholly below ``min_quantized_agreement``
or their mean logit cosine similarity to fp32 is below ``min_logit_cosine`` (a
near-chance reference model otherwise lets a broken int8 model through: its
accuracy cannot drop much). Every record carries 95 % intervals for accuracy
and agreement, and :func:`sample_warnings` says when the evaluation sample is
too small to resolve the thresholds applied to it. Artefacts that cannot run
here are ``not verified on this platform`` — never passed.

Examples:
    >>> VerifyConfig.default().max_recall_drop
    0.02
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.artefacts.manifest import STATUS_FAILED, STATUS_NOT_VERIFIED, STATUS_PASSED
from cellsdk.artefacts.selfcheck import runtime_version
from cellsdk.artefacts.speed import median_ms
from cellsdk.classifier import Classifier
from cellsdk.converters.calibration import ImageSet
from cellsdk.errors import (
    CellSDKError,
    ConfigError,
    CpuVerificationWarning,
    DeviceUnavailableError,
    PlatformNotSupportedError,
)
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import classification_report, mean_cosine, softmax, wilson_interval

__all__ = ["VerifyConfig", "judge", "reference_logits", "sample_warnings", "verify_artefact", "wilson_interval"]

_ROUNDING = 1e-9  # fractions computed from counts are compared with this much slack


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds of the gate (fractions: 0.005 = 0.5 points).

    Attributes:
        max_accuracy_drop: largest accepted fall in accuracy.
        max_recall_drop: largest accepted fall in any one class's recall.
        min_agreement: smallest accepted top-1 agreement with fp32, for fp32 and fp16 artefacts.
        min_quantized_agreement: quantized artefacts fail when the upper end of the 95 % interval of their
            top-1 agreement with fp32 is below this. 0.98, chosen by measurement: correct int8 artefacts of the
            shipped model agree 99.18-99.77 % on the 1,712 validation images, the same recipes with weights
            that saturate on AVX2 (the ``vnni`` recipe run there) 96.14-96.90 %.
        min_logit_cosine: quantized artefacts fail when the mean cosine similarity of their logits to fp32's is
            below this. 0.98: correct int8 artefacts 0.9964-0.9996, saturating ones 0.954-0.962.
        latency_runs: batch-1 runs timed per artefact (model only); 0 skips timing.
    """

    max_accuracy_drop: float = 0.005
    max_recall_drop: float = 0.02
    min_agreement: float = 0.995
    min_quantized_agreement: float = 0.98
    min_logit_cosine: float = 0.98
    latency_runs: int = 30

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "max_recall_drop", "min_agreement", "min_quantized_agreement"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        if not -1 <= self.min_logit_cosine <= 1:
            raise ConfigError(f"min_logit_cosine must be in [-1, 1], got {self.min_logit_cosine}")

    @classmethod
    def default(cls) -> VerifyConfig:
        """Accuracy -0.5 points, any class recall -2 points, fp32/fp16 agreement 99.5 %.

        Examples:
            >>> VerifyConfig.default().max_recall_drop
            0.02
        """
        return cls()

    @classmethod
    def strict(cls) -> VerifyConfig:
        """Half the default tolerances.

        Examples:
            >>> VerifyConfig.strict().max_accuracy_drop
            0.0025
        """
        return cls(max_accuracy_drop=0.0025, max_recall_drop=0.01, min_agreement=0.999,
                   min_quantized_agreement=0.99, min_logit_cosine=0.99)

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready dictionary.

        Examples:
            >>> VerifyConfig.default().to_dict()["min_agreement"]
            0.995
        """
        return {"max_accuracy_drop": self.max_accuracy_drop, "max_recall_drop": self.max_recall_drop,
                "min_agreement": self.min_agreement, "min_quantized_agreement": self.min_quantized_agreement,
                "min_logit_cosine": self.min_logit_cosine}


def sample_warnings(targets: np.ndarray, labels: tuple[str, ...], config: VerifyConfig) -> list[str]:
    """What the evaluation sample is too small to tell, one sentence each (empty when it can resolve the gate).

    Examples:
        >>> sample_warnings(np.array([0] * 4 + [1] * 60), ("basophil", "neutrophil"), VerifyConfig())[0][:60]
        'basophil has 4 evaluation images: one image moves its recall'
    """
    out = []
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(labels))
    coarse = [(labels[i], int(c)) for i, c in enumerate(counts) if c > 0 and 1 / c > config.max_recall_drop + _ROUNDING]
    if coarse:
        name, count = min(coarse, key=lambda item: item[1])
        others = f" (and {len(coarse) - 1} more classes)" if len(coarse) > 1 else ""
        out.append(f"{name} has {count} evaluation images: one image moves its recall {100 / count:.1f} points, "
                   f"more than the {config.max_recall_drop * 100:.1f}-point limit{others}; the recall check cannot "
                   f"resolve its limit: verify on at least {int(np.ceil(1 / max(config.max_recall_drop, 1e-9)))} "
                   "images per class")
    n = int(counts.sum())
    if n and 1 / n > config.max_accuracy_drop + _ROUNDING:
        out.append(f"{n} evaluation images: one image moves accuracy {100 / n:.2f} points, more than the "
                   f"{config.max_accuracy_drop * 100:.2f}-point limit")
    return out


def reference_logits(model: Any, images: ImageSet, batch_size: int = 64) -> np.ndarray:
    """The fp32 PyTorch model's logits on the evaluation images (the model itself is left untouched).

    Examples:
        >>> reference_logits(model, images).shape  # doctest: +SKIP
        (400, 8)
    """
    import copy

    import torch

    # channels-last is ~2x faster on CPU, but on a copy: the converters quantize this same model,
    # and torch FX int8 from channels-last weights gives garbage (0 % agreement on Lite0).
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    outputs = []
    with torch.inference_mode():
        for batch in images.batches(batch_size):
            tensor = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            outputs.append(model(tensor).float().numpy())
    return np.concatenate(outputs).astype(np.float64)


def verify_artefact(path: Path, precision: str, expected: ModelMetadata, images: ImageSet, reference: np.ndarray,
                    config: VerifyConfig, options: dict[str, Any] | None = None,
                    outputs: dict[str, np.ndarray] | None = None, *, guard_probe: Any = None,
                    guard_config: Any = None, device: str = "cpu") -> dict[str, Any]:
    """Load ``path`` through Classifier on ``device``, run the gate, and return the verification record.

    ``outputs``, if given, receives the artefact's outputs on ``images`` under its file name (the checks on
    other CPU classes compare with them instead of running the artefact here again).

    The record holds ``status`` (passed / failed / not verified on this platform), ``reasons``,
    and the measured figures. With ``guard_probe`` (:class:`cellsdk.converters.guard.GuardProbe`) the
    artefact's OOD guard is checked too (:func:`cellsdk.converters.guard.check_guard`), under ``guard``.
    On a GPU ``device`` (``cuda``, ``cuda:N``, ``tensorrt``) the artefact runs there (the reference stays the
    fp32 PyTorch model's outputs); a device this machine cannot use raises instead of failing the artefact.

    Examples:
        >>> record = verify_artefact("out/model.int8.onnx", images, reference, VerifyConfig.default())  # doctest: +SKIP
        >>> record["status"]  # doctest: +SKIP
        'passed'
    """
    try:
        with warnings.catch_warnings():  # this is the verification the CPU-class warning asks for
            warnings.simplefilter("ignore", CpuVerificationWarning)
            classifier = Classifier.load(path, device=device, self_check=False, **(options or {}))
    except PlatformNotSupportedError as err:
        return {"status": STATUS_NOT_VERIFIED, "reasons": [str(err).split(": ", 1)[-1]]}
    except DeviceUnavailableError:
        raise  # the machine's problem, not the artefact's
    except CellSDKError as err:
        return {"status": STATUS_FAILED, "reasons": [f"does not load in cellsdk: {err}"]}
    reasons = _metadata_mismatches(classifier.metadata, expected)
    runs = [classifier.run_outputs(batch) for batch in images.batches(64)]
    run_outputs = {name: np.concatenate([r[name] for r in runs]) for name in runs[0]} if runs else {}
    logits = run_outputs["logits"].astype(np.float64)
    if outputs is not None:
        outputs[path.name] = logits
    record = judge(logits, precision, expected, images.targets, reference, config)
    record["runtime"] = classifier.backend.describe()
    record["runtime_version"] = runtime_version(classifier.backend)
    reasons.extend(record.pop("reasons"))
    if guard_probe is not None and expected.guard is not None:
        from cellsdk.converters.guard import GuardConfig, check_guard

        record["guard"], guard_reasons = check_guard(classifier, run_outputs, guard_probe,
                                                     guard_config or GuardConfig())
        reasons.extend(guard_reasons)
    if config.latency_runs:
        record["latency_ms"] = _latency(classifier, images.arrays[:1], config.latency_runs)
    record["status"] = STATUS_FAILED if reasons else STATUS_PASSED
    record["reasons"] = reasons
    return record


def judge(logits: np.ndarray, precision: str, expected: ModelMetadata, targets: np.ndarray, reference: np.ndarray,
          config: VerifyConfig) -> dict[str, Any]:
    """The gate on an artefact's outputs: the measured figures and ``reasons`` (empty when it passes).

    Used for the native check and for the checks on other CPU classes (:mod:`cellsdk.converters.targets`),
    whose outputs come back from another process.

    Examples:
        >>> figures, reasons = judge(outputs, reference, images.targets, "int8", VerifyConfig.default())  # doctest: +SKIP
        >>> reasons  # doctest: +SKIP
        []
    """
    labels = expected.labels
    logits = np.asarray(logits, dtype=np.float64)
    probabilities = softmax(logits) if expected.output == "logits" else logits
    reference_probabilities = softmax(reference) if expected.output == "logits" else reference
    report = classification_report(targets, probabilities, labels)
    base = classification_report(targets, reference_probabilities, labels)
    agreeing = int((probabilities.argmax(1) == reference_probabilities.argmax(1)).sum())
    agreement = agreeing / max(1, len(targets))
    agreement_interval = wilson_interval(agreeing, len(targets))
    compared, against = (logits, reference) if expected.output == "logits" else (probabilities, reference_probabilities)
    cosine = mean_cosine(compared, against)
    correct = int(np.rint(report["accuracy"] * len(targets)))
    recall_change = {label: report["per_class"][label]["recall"] - base["per_class"][label]["recall"]
                     for label in labels if base["per_class"][label]["support"] > 0}
    worst_class = min(recall_change, key=lambda label: recall_change[label])
    record: dict[str, Any] = {
        "images": len(targets),
        "top1_agreement": agreement, "agreement_interval": list(agreement_interval),
        "logit_cosine": cosine,
        "accuracy": report["accuracy"], "accuracy_interval": list(wilson_interval(correct, len(targets))),
        "accuracy_change": report["accuracy"] - base["accuracy"],
        "macro_f1": report["macro_f1"], "macro_f1_change": report["macro_f1"] - base["macro_f1"],
        "min_recall": report["min_recall"], "ece": report["ece"],
        "recall_change": recall_change,
        "worst_class": worst_class, "worst_recall_change": recall_change[worst_class],
        "max_logit_diff": float(np.abs(logits - reference).max()),
        "max_probability_diff": float(np.abs(probabilities - reference_probabilities).max()),
    }
    reasons = []
    # a drop exactly at the limit passes: 1 image of 50 is 0.02 but computes as 0.020000000000000018
    if -record["accuracy_change"] > config.max_accuracy_drop + _ROUNDING:
        reasons.append(f"accuracy fell {-record['accuracy_change'] * 100:.2f} points "
                       f"(limit {config.max_accuracy_drop * 100:.2f})")
    for label, change in recall_change.items():
        if -change > config.max_recall_drop + _ROUNDING:
            reasons.append(f"recall of {label} fell {-change * 100:.2f} points (limit {config.max_recall_drop * 100:.2f})")
    if precision in ("fp32", "fp16") and agreement < config.min_agreement - _ROUNDING:
        reasons.append(f"top-1 agreement with fp32 {agreement * 100:.2f} % (limit {config.min_agreement * 100:.2f} %)")
    if precision not in ("fp32", "fp16"):
        if agreement_interval[1] < config.min_quantized_agreement - _ROUNDING:
            reasons.append(f"top-1 agreement with fp32 {agreement * 100:.2f} % (95 % interval "
                           f"{agreement_interval[0] * 100:.1f}-{agreement_interval[1] * 100:.1f} %, wholly below the "
                           f"{precision} limit {config.min_quantized_agreement * 100:.1f} %)")
        if cosine < config.min_logit_cosine - _ROUNDING:
            reasons.append(f"logit cosine similarity to fp32 {cosine:.4f} (limit {config.min_logit_cosine:.4f})")
    record["reasons"] = reasons
    return record


def _metadata_mismatches(found: ModelMetadata, expected: ModelMetadata) -> list[str]:
    problems = []
    for name in ("labels", "preprocessing", "arch", "precision", "source_checkpoint_sha256", "outputs", "guard"):
        if getattr(found, name) != getattr(expected, name):
            problems.append(f"metadata read back differs in {name}")
    return problems


def _latency(classifier: Classifier, one: np.ndarray, runs: int) -> float:
    """Median model-only latency at batch 1, in ms, after two warm-up calls."""
    return median_ms(lambda: classifier.raw_outputs(one), runs)

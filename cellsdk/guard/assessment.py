"""The out-of-distribution guard a model carries: score, thresholds, input checks, one verdict per image.

A converted model (schema 3) stores a ``guard`` record in its metadata: the
fitted OOD score (:mod:`cellsdk.guard.scores`, statistics included), the score
threshold chosen on the validation split for a stated in-distribution
retention, the confidence below which an in-distribution answer is
``uncertain``, and the input checks' ranges (:mod:`cellsdk.guard.input_checks`).
Its artefacts export the pooled ``features`` beside the logits, so every
runtime computes the same score in numpy.

:meth:`Guard.assess` turns a batch's logits, features and image statistics into
one :class:`Assessment` per image:

* ``out_of_distribution``: the score is above its threshold, or an input check fired;
* ``uncertain``: in distribution, but the confidence is below the threshold;
* ``ok``: otherwise.

Examples:
    >>> from cellsdk.guard.scores import MaxSoftmax
    >>> guard = Guard(MaxSoftmax(), threshold=-0.9, retention=0.95)
    >>> [a.status for a in guard.assess(np.array([[4.0, 0.0], [0.1, 0.0]]), None, None)]
    ['ok', 'out_of_distribution']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellsdk.errors import ConfigError, MetadataError
from cellsdk.guard.input_checks import InputChecks
from cellsdk.guard.scores import Score, score_from_dict
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import softmax

__all__ = ["GUARD_MODES", "STATUSES", "Assessment", "Guard", "guard_summary"]

log = logging.getLogger("cellsdk")
_NOTED: set[str] = set()

#: ``Classifier(ood=...)``: flag (status and reasons, label kept), reject (label withheld), off.
GUARD_MODES = ("flag", "reject", "off")
#: The statuses a prediction can have.
STATUSES = ("ok", "out_of_distribution", "uncertain")


@dataclass(frozen=True)
class Assessment:
    """The guard's verdict on one image.

    Attributes:
        status: ``ok``, ``out_of_distribution`` or ``uncertain``.
        ood_score: the OOD score (higher = less like the training data), or None without a guard.
        reasons: why the status is not ``ok``, in plain words.
    """

    status: str = "ok"
    ood_score: float | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Guard:
    """A fitted guard (usually built from a model's metadata with :meth:`from_metadata`).

    Attributes:
        score: the fitted OOD score.
        threshold: scores above it are out of distribution.
        retention: the share of validation images the threshold keeps.
        confidence_threshold: in-distribution answers below this confidence are ``uncertain`` (None: never).
        input_checks: the image checks, or None.
        record: the metadata record it was built from (figures, provenance).
    """

    score: Score
    threshold: float
    retention: float
    confidence_threshold: float | None = None
    input_checks: InputChecks | None = None
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_features(self) -> bool:
        """Whether the score reads the model's features output."""
        return self.score.needs_features

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Guard:
        """Rebuild from a metadata ``guard`` record.

        Raises:
            MetadataError: the record is malformed.

        Examples:
            >>> Guard.from_record({"score": {"name": "msp"}, "threshold": -0.5}).threshold
            -0.5
        """
        if not isinstance(record, Mapping):
            raise MetadataError("guard must be a JSON object: re-convert the model")
        try:
            threshold = float(record["threshold"])
            retention = float(record.get("retention", 0.95))
            confidence = record.get("confidence_threshold")
            confidence = None if confidence is None else float(confidence)
        except (KeyError, TypeError, ValueError) as err:
            raise MetadataError(f"guard record is malformed ({err}): re-convert the model") from None
        if not math.isfinite(threshold):
            raise MetadataError("guard threshold must be a finite number: re-convert the model")
        checks = record.get("input_checks")
        return cls(score_from_dict(record.get("score")), threshold, retention, confidence,
                   None if checks is None else InputChecks.from_dict(checks), dict(record))

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata) -> Guard | None:
        """The model's guard, or None when the model carries none (older artefacts, third-party models).

        Examples:
            >>> from cellsdk.metadata import ModelMetadata, Preprocessing
            >>> Guard.from_metadata(ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8))) is None
            True
        """
        return None if metadata.guard is None else cls.from_record(metadata.guard)

    @classmethod
    def for_model(cls, metadata: ModelMetadata, name: str = "this model") -> Guard | None:
        """:meth:`from_metadata`, saying once per model (at INFO) that a model without a guard flags nothing.

        Examples:
            >>> from cellsdk.metadata import ModelMetadata, Preprocessing
            >>> Guard.for_model(ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8))) is None
            True
        """
        guard = cls.from_metadata(metadata)
        if guard is None and name not in _NOTED:
            _NOTED.add(name)
            log.info(f"cellsdk: {name} carries no OOD guard (converted without one, or not by cellsdk-convert): "
                     "every prediction has status ok; re-convert it with cellsdk-convert to add one")
        return guard

    def with_thresholds(self, *, threshold: float | None = None, confidence_threshold: float | None = None) -> Guard:
        """The same guard with other thresholds (e.g. a site's own retention target).

        Examples:
            >>> from cellsdk.guard.scores import MaxSoftmax
            >>> Guard(MaxSoftmax(), threshold=-0.9, retention=0.95).with_thresholds(threshold=-0.5).threshold
            -0.5
        """
        import dataclasses

        changes: dict[str, Any] = {}
        if threshold is not None:
            changes["threshold"] = float(threshold)
        if confidence_threshold is not None:
            if not 0 <= confidence_threshold <= 1:
                raise ConfigError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
            changes["confidence_threshold"] = float(confidence_threshold)
        return dataclasses.replace(self, **changes)

    def scores(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """The OOD score of every row.

        Examples:
            >>> from cellsdk.guard.scores import MaxSoftmax
            >>> Guard(MaxSoftmax(), threshold=-0.9, retention=0.95).scores(np.array([[0.0, 0.0]]), None).tolist()
            [-0.5]
        """
        return self.score.score(np.asarray(logits, dtype=np.float64), features)

    def assess(self, logits: np.ndarray, features: np.ndarray | None,
               image_stats: Sequence[Mapping[str, float] | None] | None,
               probabilities: np.ndarray | None = None) -> list[Assessment]:
        """One verdict per row of ``logits`` (``image_stats`` from :func:`cellsdk.guard.input_checks.measure`, or None).

        Examples:
            >>> from cellsdk.guard.scores import MaxSoftmax
            >>> guard = Guard(MaxSoftmax(), threshold=-0.9, retention=0.95, confidence_threshold=0.99)
            >>> [a.status for a in guard.assess(np.array([[9.0, 0.0], [4.0, 0.0]]), None, None)]
            ['ok', 'uncertain']
        """
        logits = np.asarray(logits, dtype=np.float64)
        probabilities = softmax(logits) if probabilities is None else probabilities
        scores = self.scores(logits, features)
        out = []
        for row, score in enumerate(scores):
            reasons = []
            if score > self.threshold:
                reasons.append(f"OOD score {score:.4g} above the threshold {self.threshold:.4g} "
                               f"({self.score.name}; kept {self.retention * 100:.0f} % of validation images)")
            stats = image_stats[row] if image_stats is not None else None
            if self.input_checks is not None and stats is not None:
                reasons.extend(self.input_checks.reasons(stats))
            if reasons:
                out.append(Assessment("out_of_distribution", float(score), tuple(reasons)))
                continue
            confidence = float(probabilities[row].max())
            if self.confidence_threshold is not None and confidence < self.confidence_threshold:
                out.append(Assessment("uncertain", float(score), (
                    f"confidence {confidence:.3f} below {self.confidence_threshold:.3f}",)))
            else:
                out.append(Assessment("ok", float(score)))
        return out


def guard_summary(record: Mapping[str, Any] | None) -> str:
    """One line describing a metadata ``guard`` record, e.g. for ``cellsdk info``.

    Examples:
        >>> guard_summary(None)
        'none (status is always ok)'
    """
    if not record:
        return "none (status is always ok)"
    score = record.get("score", {}) or {}
    figures = record.get("validation", {}) or {}
    parts = [f"{score.get('name', '?')}" + (f" ({score['dims']} d)" if "dims" in score else ""),
             f"threshold {record.get('threshold', float('nan')):.4g} keeps {record.get('retention', 0) * 100:.0f} % of val"]
    originals = record.get("originals")
    if originals:
        parts[-1] += (f" and {originals.get('kept_after', 0) * 100:.0f} % of {originals.get('images', '?')} "
                      "full-resolution originals")
    elif record.get("threshold_note"):
        parts[-1] += " (this artefact's own threshold: fp32's kept too few)"
    if "mean_auroc" in figures:
        parts.append(f"synthetic-shift AUROC {figures['mean_auroc']:.3f}")
    if record.get("confidence_threshold") is not None:
        parts.append(f"uncertain below confidence {record['confidence_threshold']:.3f}")
    if record.get("input_checks"):
        parts.append(f"{len(record['input_checks'].get('ranges', {}))} input statistics checked")
    return ", ".join(parts)

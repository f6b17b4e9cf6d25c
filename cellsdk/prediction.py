"""``Prediction``: what ``Classifier.predict`` returns for one image, with the OOD guard's verdict.

Example:
    >>> p = Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75), ("a", 0.25)))
    >>> p.ok, p.to_dict()["status"]
    (True, 'ok')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Prediction"]


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        label: the most probable class; None when the guard rejected the image (``ood="reject"``).
        index: its index in the model's labels (None when rejected).
        confidence: the most probable class's probability (kept when rejected, for audit).
        probabilities: every class's probability, by label, in label order.
        top_k: the ``k`` most probable ``(label, probability)`` pairs, best first (empty when rejected).
        status: ``ok``, ``out_of_distribution`` (unlike the training images) or ``uncertain`` (in
            distribution but below the model's confidence threshold); always ``ok`` for models without
            a guard or with ``ood="off"``.
        ood_score: the guard's OOD score (higher = less like the training data), None without a guard.
        reasons: why the status is not ``ok``: the score, and each input check that fired.

    Example:
        >>> p = Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75), ("a", 0.25)))
        >>> p.to_dict()["top_k"][0], p.status
        ({'label': 'b', 'probability': 0.75}, 'ok')
    """

    label: str | None
    index: int | None
    confidence: float
    probabilities: Mapping[str, float]
    top_k: tuple[tuple[str, float], ...]
    status: str = "ok"
    ood_score: float | None = None
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the guard raised nothing."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"label": self.label, "index": self.index, "confidence": self.confidence, "status": self.status,
                "ood_score": self.ood_score, "reasons": list(self.reasons),
                "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
                "probabilities": dict(self.probabilities)}

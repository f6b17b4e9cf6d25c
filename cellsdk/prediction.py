"""``Prediction``: what ``Classifier.predict`` returns for one image, with the OOD guard's verdict.

Examples:
    >>> p = Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75), ("a", 0.25)))
    >>> p.ok, p.to_dict()["status"]
    (True, 'ok')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RECORD_FIELDS", "Prediction", "format_prediction", "one_line", "prediction_record"]


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

    Examples:
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
        """A JSON-ready dictionary.

        Examples:
            >>> Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75),)).to_dict()["label"]
            'b'
        """
        return {"label": self.label, "index": self.index, "confidence": self.confidence, "status": self.status,
                "ood_score": self.ood_score, "reasons": list(self.reasons),
                "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
                "probabilities": dict(self.probabilities)}


#: the fields of a prediction a JSON line of ``cellsdk predict --json`` carries
RECORD_FIELDS = ("label", "index", "confidence", "top_k", "status", "ood_score", "reasons")


def prediction_record(source: Any, prediction: Prediction) -> dict[str, Any]:
    """One image's JSON record as ``cellsdk predict --json`` prints it: its path, then :data:`RECORD_FIELDS`.

    Examples:
        >>> p = Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75),))
        >>> prediction_record("cell.png", p)["top_k"]
        [{'label': 'b', 'probability': 0.75}]
    """
    record = prediction.to_dict()
    return {"path": str(source), **{key: record[key] for key in RECORD_FIELDS}}


def format_prediction(source: Any, prediction: Prediction) -> str:
    """One image's line as ``cellsdk predict`` prints it: path, ranked classes, and the guard's status and first
    reason when it is not ``ok``.

    Examples:
        >>> p = Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75), ("a", 0.25)))
        >>> format_prediction("cell.png", p)
        'cell.png\\tb 75.0%, a 25.0%'
    """
    ranked = ", ".join(f"{label} {p * 100:.1f}%" for label, p in prediction.top_k) or "(no answer)"
    shown = one_line(str(source))
    if prediction.ok:
        return f"{shown}\t{ranked}"
    more = f" (+{len(prediction.reasons) - 1} more)" if len(prediction.reasons) > 1 else ""
    return f"{shown}\t{ranked}\t{prediction.status.upper()}: {prediction.reasons[0]}{more}"


def one_line(text: str) -> str:
    """``text`` with what would break a line-per-image output escaped as Python writes it: line breaks, tabs and
    other control characters, and the undecodable bytes of a file name (``\\udcXX``).

    Examples:
        >>> print(one_line("slide 3/new\\nline\\tcell.jpg"))
        slide 3/new\\nline\\tcell.jpg
        >>> one_line("cell.jpg")
        'cell.jpg'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)

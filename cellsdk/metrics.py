"""Classification metrics in numpy: accuracy, macro-F1, per-class scores, calibration.

Used by training (validation macro-F1), evaluation, the conversion gate and
the benchmark's accuracy rows, so every tool computes the same numbers.

Examples:
    >>> import numpy as np
    >>> report = classification_report(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]), ("a", "b"))
    >>> round(report["accuracy"], 4), report["per_class"]["b"]["recall"]
    (0.6667, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "auroc",
    "classification_report",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "fpr_at_tpr",
    "mean_cosine",
    "nll",
    "risk_coverage",
    "softmax",
    "wilson_interval",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable.

    Examples:
        >>> softmax(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns.

    Examples:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def expected_calibration_error(
    probabilities: np.ndarray, y_true: np.ndarray, n_bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-1 confidence, with equal-width bins.

    ``ECE = sum_b |accuracy_b - confidence_b| * n_b / N``.

    Returns:
        The ECE and, per bin, its edges, count, mean confidence and accuracy
        (the data of a reliability diagram).

    Examples:
        >>> ece, bins = expected_calibration_error(np.array([[0.75, 0.25]] * 4), np.array([0, 0, 0, 1]))
        >>> ece
        0.0
    """
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds (edge_b, edge_b+1]; a confidence of exactly 0 falls in the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    total = len(confidence)
    ece = 0.0
    bins: list[dict[str, float]] = []
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else 0.0
        acc = float(correct[mask].mean()) if count else 0.0
        if count:
            ece += abs(acc - conf) * count / total
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "confidence": conf, "accuracy": acc})
    return float(ece), bins


def classification_report(
    y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], *, n_bins: int = 15
) -> dict[str, Any]:
    """All evaluation metrics for one set of predictions, as a JSON-ready dictionary.

    Precision of a class never predicted is 0, as is recall of a class absent
    from ``y_true``. Macro averages run over the classes that occur in
    ``y_true`` or in the predictions, so a class missing from a small
    evaluation set does not count as a failure.

    Args:
        y_true: true class indices, shape ``N``.
        probabilities: predicted probabilities, shape ``N x C``.
        labels: class names, length ``C``.
        n_bins: bins of the calibration error.

    Returns:
        ``n``, ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
        ``min_recall``, ``ece``, ``per_class`` (precision, recall, f1, support by
        label), ``confusion_matrix`` (rows true, columns predicted),
        ``reliability`` (the ECE bins), ``labels``, ``risk_coverage`` (accuracy of the most confident
        answers at coverages 50 ... 100 %, and the area under the risk-coverage curve).

    Examples:
        >>> report = classification_report([0, 1, 1], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), ["a", "b"])
        >>> round(report["accuracy"], 3), report["per_class"]["b"]["recall"]
        (0.667, 0.5)
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(labels)
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        denominator = precision + recall
        f1 = np.where(denominator > 0, 2 * precision * recall / denominator, 0.0)
    present = (support > 0) | (predicted > 0)
    ece, bins = expected_calibration_error(probabilities, y_true, n_bins)
    per_class = {
        label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "min_recall": float(recall[support > 0].min()) if (support > 0).any() else 0.0,
        "ece": ece,
        "labels": list(labels),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "reliability": bins,
        "risk_coverage": _risk_coverage_summary(y_pred == y_true, probabilities.max(axis=1) if len(y_true) else y_pred),
    }


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``.

    Log-probabilities work as ``logits`` too: the softmax ignores a per-row shift.

    Examples:
        >>> round(nll(np.array([[0.0, 0.0]]), np.array([0])), 4)
        0.6931
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    picked = shifted[np.arange(len(shifted)), np.asarray(y_true, dtype=np.int64)]
    return float((log_norm - picked).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, *, low: float = 0.05, high: float = 20.0,
                    tolerance: float = 1e-5) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    The NLL is unimodal in ``log T``, so a golden-section search over
    ``[low, high]`` finds it; it never changes which class is predicted.
    Log-probabilities work as ``logits`` too.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 2000)
        >>> true_logits = rng.normal(size=(2000, 3)); true_logits[np.arange(2000), y] += 2.0
        >>> sampled = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
        >>> 2.8 < fit_temperature(true_logits * 3.0, sampled) < 3.2  # logits over-confident by 3x
        True
    """
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        raise ValueError("fit_temperature needs at least one example")
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = np.log(low), np.log(high)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, y_true, np.exp(c)), nll(logits, y_true, np.exp(d))
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, y_true, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, y_true, np.exp(d))
    return float(np.exp((a + b) / 2.0))


def auroc(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling outliers (higher scores) from inliers; ties count half.

    Examples:
        >>> auroc(np.array([0.1, 0.2]), np.array([0.3, 0.2]))
        0.875
    """
    inliers = np.asarray(inlier_scores, dtype=np.float64).ravel()
    outliers = np.asarray(outlier_scores, dtype=np.float64).ravel()
    if not len(inliers) or not len(outliers):
        return float("nan")
    both = np.concatenate([inliers, outliers])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    values = both[order]  # average the ranks of ties
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        if end - start > 1:
            ranks[order[start:end]] = (start + end + 1) / 2.0
    rank_sum = ranks[len(inliers):].sum()
    return float((rank_sum - len(outliers) * (len(outliers) + 1) / 2.0) / (len(inliers) * len(outliers)))


def fpr_at_tpr(inlier_scores: np.ndarray, outlier_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of outliers accepted when the threshold keeps ``tpr`` of the inliers (FPR at 95 % TPR).

    Examples:
        >>> fpr_at_tpr(np.arange(100.0), np.array([50.0, 200.0]))
        0.5
    """
    inliers = np.asarray(inlier_scores, dtype=np.float64).ravel()
    outliers = np.asarray(outlier_scores, dtype=np.float64).ravel()
    if not len(inliers) or not len(outliers):
        return float("nan")
    threshold = np.quantile(inliers, tpr)
    return float((outliers <= threshold).mean())


def risk_coverage(correct: np.ndarray, confidence: np.ndarray) -> dict[str, Any]:
    """Accuracy of the accepted predictions at every coverage, most confident first.

    Returns ``coverage`` and ``accuracy`` arrays (one point per accepted image count) and the area under
    the risk-coverage curve (``aurc``, lower is better).

    Examples:
        >>> curve = risk_coverage(np.array([1, 0, 1]), np.array([0.9, 0.5, 0.8]))
        >>> curve["accuracy"][:2].tolist(), round(curve["aurc"], 4)
        ([1.0, 1.0], 0.1111)
    """
    correct = np.asarray(correct, dtype=np.float64).ravel()
    order = np.argsort(-np.asarray(confidence, dtype=np.float64).ravel(), kind="stable")
    hits = np.cumsum(correct[order])
    counts = np.arange(1, len(correct) + 1)
    accuracy = hits / counts if len(correct) else np.zeros(0)
    return {"coverage": counts / max(len(correct), 1), "accuracy": accuracy,
            "aurc": float(np.mean(1.0 - accuracy)) if len(correct) else float("nan")}


#: The coverages a report lists the risk-coverage curve at.
COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


def _risk_coverage_summary(correct: np.ndarray, confidence: np.ndarray) -> dict[str, Any]:
    curve = risk_coverage(correct, confidence)
    points = []
    n = len(curve["coverage"])
    order = np.sort(np.asarray(confidence, dtype=np.float64))[::-1]
    for coverage in COVERAGES:
        if not n:
            break
        k = max(1, int(np.ceil(coverage * n)))
        points.append({"coverage": coverage, "accuracy": float(curve["accuracy"][k - 1]),
                       "min_confidence": float(order[k - 1])})
    return {"aurc": curve["aurc"], "points": points}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion (sensible at 0, 1 and small ``n``).

    Examples:
        >>> [round(x, 3) for x in wilson_interval(31, 32)]
        [0.843, 0.994]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The mean over rows of the cosine similarity of ``a`` and ``b`` (each row flattened); 1.0 for no rows.

    Examples:
        >>> mean_cosine(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0, 0.0], [1.0, 0.0]]))
        0.5
    """
    if not len(a):
        return 1.0
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))

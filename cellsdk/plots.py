"""Plots a person would rather look at than read: training curves, confusion matrix, reliability.

matplotlib is imported lazily (it is part of the ``[train]`` extra), with the
non-interactive Agg backend, and every plot is written atomically.

Examples:
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "cm.png")
    >>> plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], out)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk._io import atomic_path
from cellsdk.errors import BackendNotInstalledError

__all__ = ["plot_confusion_matrix", "plot_reliability", "plot_risk_coverage", "plot_training_curves", "pyplot"]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display), or BackendNotInstalledError naming the extra.

    Examples:
        >>> pyplot().__name__  # doctest: +SKIP
        'matplotlib.pyplot'
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendNotInstalledError(
            "matplotlib is not installed (needed for plots): pip install 'cellsdk[train]'"
        ) from None
    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    plt = pyplot()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return target


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Loss, validation accuracy / macro-F1 and learning rate per epoch, in one PNG.

    Args:
        history: one record per epoch with ``epoch``, ``train_loss``,
            ``val_loss``, ``val_accuracy``, ``val_macro_f1``, ``lr``.
        path: where to write the PNG.

    Examples:
        >>> plot_training_curves(result.history, "runs/demo/curves.png")  # doctest: +SKIP
    """
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [h["val_accuracy"] for h in history], "o-", label="accuracy")
    axes[1].plot(epochs, [h["val_macro_f1"] for h in history], "o-", label="macro-F1")
    axes[1].set_title("validation")
    axes[2].plot(epochs, [h["lr"] for h in history], "o-")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """A confusion matrix (rows true, columns predicted), coloured by row share, with counts.

    Examples:
        >>> plot_confusion_matrix([[5, 1], [0, 6]], ["a", "b"], "confusion.png")  # doctest: +SKIP
        PosixPath('confusion.png')
    """
    plt = pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title or f"confusion matrix (n={int(counts.sum())})")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(bins: Sequence[Mapping[str, float]], ece: float, path: str | os.PathLike) -> Path:
    """A reliability diagram: accuracy against confidence per bin, with the ECE.

    Examples:
        >>> plot_reliability(report["reliability"], "reliability.png")  # doctest: +SKIP
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    accuracy = [b["accuracy"] if b["count"] else 0.0 for b in bins]
    ax.bar(centres, accuracy, width=width * 0.95, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece * 100:.2f} %)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_risk_coverage(correct: Sequence[bool], confidence: Sequence[float], path: str | os.PathLike, *,
                       operating_point: tuple[float, float] | None = None, title: str | None = None) -> Path:
    """Accuracy of the accepted predictions against coverage (most confident first), with the guard's operating point.

    Examples:
        >>> plot_risk_coverage(report["risk_coverage"], "runs/eval/risk_coverage.png")  # doctest: +SKIP
    """
    import numpy as np

    from cellsdk.metrics import risk_coverage

    plt = pyplot()
    curve = risk_coverage(np.asarray(correct), np.asarray(confidence))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["coverage"], curve["accuracy"] * 100, label=f"by confidence (AURC {curve['aurc']:.4f})")
    if operating_point is not None:
        ax.plot([operating_point[0]], [operating_point[1] * 100], "o", color="C3",
                label=f"guard: {operating_point[0] * 100:.1f} % kept, {operating_point[1] * 100:.2f} % right")
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy of the answered images (%)")
    ax.set_xlim(0, 1.01)
    ax.set_title(title or "risk-coverage")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)

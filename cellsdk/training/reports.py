"""Training, adaptation and calibration results as the terminal shows them (what ``cellsdk-train``, ``cellsdk adapt``
and ``cellsdk-calibrate`` print).

Examples:
    >>> history = [{"epoch": 1, "train_loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.6, "val_macro_f1": 0.5,
    ...             "lr": 1e-3, "seconds": 3.0}]
    >>> print(format_history(history, best_epoch=1).splitlines()[1])
        1     1.2000    1.0000   60.00%  50.00%  1.00e-03     3.0 *
"""

from __future__ import annotations

from typing import Any

__all__ = ["flagged_shares", "format_before_after", "format_calibration", "format_history", "format_train_result"]


def format_history(history: list[dict[str, Any]], best_epoch: int) -> str:
    """One line per epoch (losses, validation accuracy and macro-F1, learning rate, seconds); ``*`` marks the best.

    Examples:
        >>> format_history([], best_epoch=1).split()[:3]
        ['epoch', 'train', 'loss']
    """
    rows = [f"{'epoch':>5} {'train loss':>10} {'val loss':>9} {'val acc':>8} {'val F1':>7} {'lr':>9} {'sec':>7}"]
    for h in history:
        mark = " *" if h["epoch"] == best_epoch else ""
        rows.append(f"{h['epoch']:>5} {h['train_loss']:>10.4f} {h['val_loss']:>9.4f} {h['val_accuracy'] * 100:>7.2f}% "
                    f"{h['val_macro_f1'] * 100:>6.2f}% {h['lr']:>9.2e} {h['seconds']:>7.1f}{mark}")
    return "\n".join(rows)


def format_train_result(result: Any) -> str:
    """A :class:`~cellsdk.training.TrainResult`: its history table, the best epoch and the checkpoints.

    Examples:
        >>> from types import SimpleNamespace
        >>> r = SimpleNamespace(history=[], best_epoch=3, best_metrics={"val_accuracy": 0.9, "val_macro_f1": 0.8},
        ...                     seconds=12.0, stopped_early=False, best_checkpoint="b", last_checkpoint="l")
        >>> print(format_train_result(r).splitlines()[1])
        best epoch 3: val accuracy 90.00 %, macro-F1 80.00 % (12.0 s)
    """
    return "\n".join([
        format_history(result.history, result.best_epoch),
        f"best epoch {result.best_epoch}: val accuracy {result.best_metrics['val_accuracy'] * 100:.2f} %, "
        f"macro-F1 {result.best_metrics['val_macro_f1'] * 100:.2f} % "
        f"({result.seconds:.1f} s{', stopped early' if result.stopped_early else ''})",
        f"checkpoints: {result.best_checkpoint}  {result.last_checkpoint}"])


def format_calibration(result: dict[str, Any]) -> str:
    """What :func:`~cellsdk.training.calibrate.calibrate_checkpoint` returned: the temperature, the figures before and
    after, the file written.

    Examples:
        >>> side = {"ece": 0.05, "nll": 0.3, "mean_confidence": 0.9, "accuracy": 0.95}
        >>> print(format_calibration({"temperature": 0.7, "split": "val", "n": 50, "before": side, "after": side,
        ...                           "out": "c.safetensors", "seconds": 1.0}).splitlines()[0])
        temperature 0.7000 fitted on val (50 images)
    """
    lines = [f"temperature {result['temperature']:.4f} fitted on {result['split']} ({result['n']} images)"]
    for name in ("before", "after"):
        side = result[name]
        lines.append(f"  {name + ':':<7} ECE {side['ece'] * 100:.2f} %, NLL {side['nll']:.4f}, "
                     f"mean confidence {side['mean_confidence'] * 100:.2f} %, accuracy {side['accuracy'] * 100:.2f} %")
    lines.append(f"wrote {result['out']} ({result['seconds']:.1f} s)")
    return "\n".join(lines)


def flagged_shares(result: Any, artefact: str = "model.int8.onnx") -> dict[str, tuple[Any, Any]] | None:
    """Per source, the share of its held-out cells flagged before (the shipped model, when it is the checkpoint's)
    and after (``artefact`` of the conversion); None when neither is known.

    Examples:
        >>> from types import SimpleNamespace
        >>> flagged_shares(SimpleNamespace(deployed_before=None, conversion=None, after={}))
    """
    before = result.deployed_before or {}
    after: dict[str, Any] = {}
    if result.conversion is not None:
        entry = next((a for a in result.conversion["artefacts"] if a.get("file") == artefact), None)
        after = {name: lab.get("flagged") for name, lab in ((entry or {}).get("labs") or {}).items()}
    if not before and not after:
        return None
    names = list(result.after) or list(before)
    return {name: ((before.get(name) or {}).get("flagged"), after.get(name)) for name in names}


def format_before_after(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                        flagged: dict[str, tuple[float | None, float | None]] | None = None) -> str:
    """A per-lab table: cells, accuracy and balanced accuracy before and after (and flagged shares, if known).

    Examples:
        >>> print(format_before_after({"labB": {"images": 10, "accuracy": 0.1, "balanced_accuracy": 0.2}},
        ...                           {"labB": {"images": 10, "accuracy": 0.9, "balanced_accuracy": 0.85}}))
        lab   cells  accuracy before -> after  balanced before -> after
        labB     10          10.0 % -> 90.0 %          20.0 % -> 85.0 %
    """
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    rows: list[tuple[str, ...]] = [("lab", "cells", "accuracy before -> after", "balanced before -> after")]
    if flagged:
        rows[0] += ("flagged before -> after",)
    for name, metrics in after.items():
        old = before.get(name) or {}
        row: tuple[str, ...] = (name, str(metrics.get("images", 0)),
               f"{pct(old.get('accuracy'))} -> {pct(metrics.get('accuracy'))}",
               f"{pct(old.get('balanced_accuracy'))} -> {pct(metrics.get('balanced_accuracy'))}")
        if flagged:
            shares = flagged.get(name, (None, None))
            row += (f"{pct(shares[0])} -> {pct(shares[1])}",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
                     for r in rows)

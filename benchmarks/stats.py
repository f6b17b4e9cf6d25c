"""Latency statistics and targets for the benchmark harness.

Examples:
    >>> s = latency_summary([0.010, 0.012, 0.011, 0.050], batch=1)
    >>> round(s["p50_ms"], 2), round(s["p95_ms"], 2), round(s["throughput_ips"], 1)
    (11.5, 44.3, 87.0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.errors import ConfigError

__all__ = ["BUSY_CORES", "DEFAULT_TARGETS", "NOISY_SPREAD", "Target", "judge", "latency_summary", "load_targets",
           "measurement_conditions"]

#: a row is "busy" when other processes kept more than this many cores busy while it was timed
BUSY_CORES = 0.25
#: a row is "noisy" when its end-to-end p95 is more than this many times its p50
NOISY_SPREAD = 1.5

DEFAULT_TARGETS = Path(__file__).with_name("targets.toml")
PERCENTILES = (50, 90, 95, 99)


def latency_summary(seconds: Sequence[float], *, batch: int = 1) -> dict[str, float]:
    """Percentiles (linear interpolation), mean and spread of per-call times, in ms, and images per second.

    Throughput is ``batch / median`` call time.

    Examples:
        >>> summary = latency_summary([0.010, 0.012, 0.011], batch=1)
        >>> round(summary["p50_ms"], 1)
        11.0
    """
    if len(seconds) == 0:
        raise ValueError("no timings to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    out = {f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES}
    out.update({"mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
                "std_ms": float(ms.std()), "runs": len(ms),
                "throughput_ips": float(batch / (out["p50_ms"] / 1e3))})
    return out


class Target(dict):
    """One device class's budget: ``p95_e2e_ms`` at ``batch``."""


def load_targets(path: str | os.PathLike | None = None) -> dict[str, Target]:
    """Read a targets TOML (default: the mission's, beside this module).

    Raises:
        ConfigError: unreadable file or a target without ``p95_e2e_ms``.

    Examples:
        >>> sorted(load_targets())[:2]
        ['cpu', 'cuda']
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
    path = Path(path) if path else DEFAULT_TARGETS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable targets file ({err})") from None
    targets = {}
    for name, entry in (data.get("targets") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("p95_e2e_ms"), (int, float)):
            raise ConfigError(f"{path}: target {name!r} needs a number p95_e2e_ms")
        targets[name] = Target(p95_e2e_ms=float(entry["p95_e2e_ms"]), batch=int(entry.get("batch", 1)))
    if not targets:
        raise ConfigError(f"{path}: no [targets.<device class>] tables")
    return targets


def judge(row: dict[str, Any], targets: dict[str, Target]) -> tuple[str, float | None]:
    """``PASS`` / ``FAIL`` against the row's device-class target, or ``-`` when none applies (other batch sizes).

    Examples:
        >>> judge({"device_class": "cpu", "batch": 1, "e2e": {"p95_ms": 61.0}}, {"cpu": Target(p95_e2e_ms=50.0, batch=1)})
        ('FAIL', 50.0)
    """
    target = targets.get(row.get("device_class", ""))
    if target is None or row.get("batch") != target["batch"] or "e2e" not in row:
        return "-", None
    return ("PASS" if row["e2e"]["p95_ms"] < target["p95_e2e_ms"] else "FAIL"), target["p95_e2e_ms"]


def measurement_conditions(row: dict[str, Any]) -> str:
    """``ok``, or why a row's figures should not be trusted: ``busy`` (other processes used the CPU while it
    was timed) and / or ``noisy`` (p95 far above p50).

    Examples:
        >>> measurement_conditions({"ok": True, "e2e": {"p50_ms": 10.0, "p95_ms": 31.0}, "other_load_cores": 0.9})
        'busy (other load 0.90 cores), noisy (p95/p50 3.1)'
        >>> measurement_conditions({"ok": True, "e2e": {"p50_ms": 10.0, "p95_ms": 11.0}, "other_load_cores": 0.0})
        'ok'
    """
    if not row.get("ok"):
        return "-"
    notes = []
    other = row.get("other_load_cores")
    if isinstance(other, (int, float)) and other > BUSY_CORES:
        notes.append(f"busy (other load {other:.2f} cores)")
    spread = row["e2e"]["p95_ms"] / row["e2e"]["p50_ms"] if row["e2e"]["p50_ms"] > 0 else 1.0
    if spread > NOISY_SPREAD:
        notes.append(f"noisy (p95/p50 {spread:.1f})")
    return ", ".join(notes) or "ok"

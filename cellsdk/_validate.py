"""Argument checks shared by the Python API and the CLI: one :class:`~cellsdk.errors.ConfigError` line each.

Examples:
    >>> require_int("batch_size", 8, minimum=1)
    8
    >>> require_int("batch_size", 0, minimum=1)
    Traceback (most recent call last):
    ...
    cellsdk.errors.ConfigError: batch_size must be a whole number >= 1, got 0
"""

from __future__ import annotations

import math
from typing import Any

from cellsdk.errors import ConfigError

__all__ = ["require_float", "require_int"]


def require_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
                optional: bool = False) -> Any:
    """``value`` if it is a whole number within ``[minimum, maximum]`` (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    bounds = " and ".join(part for part in (f">= {minimum}" if minimum is not None else "",
                                           f"<= {maximum}" if maximum is not None else "") if part)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum) \
            or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be a whole number{' ' + bounds if bounds else ''}, got {value!r}")
    return value


def require_float(name: str, value: Any, *, minimum: float | None = None, exclusive: bool = False,
                  maximum: float | None = None, optional: bool = False) -> Any:
    """``value`` if it is a finite number above ``minimum`` (strictly when ``exclusive``) and up to ``maximum``."""
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        low = f"{'>' if exclusive else '>='} {minimum}" if minimum is not None else ""
        high = f"<= {maximum}" if maximum is not None else ""
        bounds = " and ".join(p for p in (low, high) if p)
        raise ConfigError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return value

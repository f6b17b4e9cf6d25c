"""The one progress bar style of cellsdk's long-running commands (tqdm, torch-free)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _Silent:
    """The bar's interface, doing nothing: for runs without tqdm (the torch-free runtime install)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "img") -> Any:
    """A tqdm bar that clears itself when done; a silent one when ``enabled`` is False or tqdm is absent."""
    if not enabled:  # importing tqdm.auto costs ~0.1 s: not for a bar nobody sees
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent()
    from cellsdk._capture import console_stream

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True,
                file=console_stream())

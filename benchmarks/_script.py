"""Entry-point wrapper for the ``python -m cellsdk.benchmarks.<script>`` tools: one-line errors, no tracebacks.

Examples:
    >>> from cellsdk.errors import ModelNotFoundError
    >>> def main() -> int:
    ...     raise ModelNotFoundError("m.onnx: no such model file or folder")
    >>> run_script(main, prog="overhead")
    Traceback (most recent call last):
    ...
    SystemExit: overhead: error: m.onnx: no such model file or folder
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from cellsdk.errors import CellSDKError, describe_os_error

__all__ = ["run_script"]


def run_script(main: Callable[[], Any], *, prog: str) -> None:
    """Run ``main``; a cellsdk error, an OS error or Ctrl-C prints ``prog: error: ...`` and exits 1."""
    try:
        result = main()
    except CellSDKError as err:
        sys.exit(f"{prog}: error: {err}")
    except OSError as err:
        sys.exit(f"{prog}: error: {describe_os_error(err)}")
    except KeyboardInterrupt:
        sys.exit(f"{prog}: interrupted")
    sys.exit(result if isinstance(result, int) else 0)

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
from pathlib import Path
from typing import Any

from cellsdk.errors import CellSDKError, describe_os_error

__all__ = ["run_script", "tool"]


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


def tool(name: str) -> str:
    """The path of one of cellsdk's command-line tools in this interpreter's environment (its ``bin`` folder), so
    that a benchmark runs the tools of the cellsdk it imports, whatever ``PATH`` says.

    Examples:
        >>> Path(tool("cellsdk-convert")).name
        'cellsdk-convert'
    """
    return str(Path(sys.executable).parent / name)

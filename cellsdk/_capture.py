"""Keep third-party tools' console chatter out of the user's terminal, in a log file instead.

Converters drive coremltools, NNCF, ONNX Runtime's quantizer and torch's exporters, which print import
warnings, rich progress bars and optimiser messages straight to the process's stdout / stderr (some from
native code). :func:`capture_tool_output` points file descriptors 1 and 2 at a log file for the duration,
while cellsdk's own progress bars and log messages keep going to the real terminal.
``CELLSDK_SHOW_TOOL_OUTPUT=1`` turns the capture off (for debugging a converter).

Examples:
    >>> import tempfile, pathlib
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "tools.log"
    >>> with capture_tool_output(log) as captured:
    ...     _ = os.write(2, b"chatter from a native library\\n")
    >>> captured.lines, log.read_text().strip()
    (1, 'chatter from a native library')
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Captured", "capture_tool_output", "console_stream"]

_CONSOLE: list[IO[str]] = []


def console_stream() -> IO[str]:
    """Where cellsdk's own progress output goes: the real terminal, even while tool output is captured."""
    return _CONSOLE[-1] if _CONSOLE else sys.stderr


@dataclass
class Captured:
    """What was captured: the log file and its count of non-empty lines (filled in on exit)."""

    path: Path
    lines: int = 0

    def summary(self) -> str:
        """One line for the user, e.g. ``third-party tools printed 170 lines; see out/conversion.log``."""
        return f"third-party tools printed {self.lines} lines (warnings, progress, optimiser notes); see {self.path}"


@contextlib.contextmanager
def capture_tool_output(path: str | os.PathLike) -> Iterator[Captured]:
    """Send everything written to fds 1 and 2 into ``path`` while the block runs; cellsdk output still shows."""
    captured = Captured(Path(path))
    if os.environ.get("CELLSDK_SHOW_TOOL_OUTPUT") == "1":
        yield captured
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except (OSError, ValueError, AttributeError):  # no real descriptors (e.g. an embedded interpreter)
        yield captured
        return
    captured.path.parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(console)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("cellsdk")
    propagate = ours.propagate
    with open(captured.path, "ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        # Python-level writers too, in case sys.stdout / sys.stderr are not fds 1 and 2 (notebooks, test runners)
        log_text = open(log_file.fileno(), "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115 - closed in finally
        python_streams = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log_text
        _CONSOLE.append(console)
        ours.addHandler(handler)
        ours.propagate = False
        try:
            yield captured
        finally:
            ours.propagate = propagate
            ours.removeHandler(handler)
            _CONSOLE.pop()
            sys.stdout, sys.stderr = python_streams
            with contextlib.suppress(OSError, ValueError):
                log_text.flush()
                sys.stdout.flush()
                sys.stderr.flush()
            log_text.close()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            console.close()
    text = captured.path.read_text(encoding="utf-8", errors="replace")
    captured.lines = sum(1 for line in text.replace("\r", "\n").splitlines() if line.strip())

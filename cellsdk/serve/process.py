"""Start ``cellsdk serve`` in its own process and wait for the address it announces (for tests, benchmarks, scripts).

No web framework is imported here: the child process needs ``cellsdk[serve]``, the caller does not.

Examples:
    >>> service = start_service(["--max-batch", "32"])  # doctest: +SKIP
    >>> service.url, service.stop()  # doctest: +SKIP
    ('http://127.0.0.1:40123/', 0)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cellsdk.errors import ConfigError

__all__ = ["ServiceProcess", "start_service"]

_ANNOUNCE = re.compile(r"cellsdk serve: (http://\S+:(\d+)/)")


@dataclass
class ServiceProcess:
    """A running ``cellsdk serve``: its process, address and console lines (read continuously, never blocking it)."""

    process: subprocess.Popen
    url: str
    port: int
    lines: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (SIGTERM: drain, then exit) and return the exit status; killed after ``timeout`` seconds.

        Examples:
            >>> service = start_service(["--model", "model.onnx"])  # doctest: +SKIP
            >>> service.stop()  # doctest: +SKIP
            0
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_service(args: Sequence[str] = (), *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                  timeout: float = 120) -> ServiceProcess:
    """``cellsdk serve --port 0 ARGS`` in a new process (``env`` added to this one's); returns once it listens.

    Raises:
        ConfigError: it exited or did not announce its address within ``timeout`` seconds (its last lines quoted).

    Examples:
        >>> service = start_service([])  # doctest: +SKIP
        >>> service.url  # doctest: +SKIP
        'http://127.0.0.1:41237'
    """
    command = [sys.executable, "-c", "import sys; from cellsdk.cli import cli; sys.argv[0] = 'cellsdk'; cli()",
               "serve", "--port", "0", *args]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    lines: list[str] = []
    found: list[re.Match[str]] = []
    ready = threading.Event()

    def read() -> None:  # drains the pipe for the process's whole life, so its console can never fill it
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            match = _ANNOUNCE.search(line)
            if match and not found:
                found.append(match)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or not found:
        process.kill()
        process.wait()
        raise ConfigError("cellsdk serve did not start: " + " | ".join(lines[-20:]))
    return ServiceProcess(process, found[0].group(1), int(found[0].group(2)), lines)

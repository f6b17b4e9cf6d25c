"""Process plumbing of every command, in one place: errors to one line, signals, exit codes, logging.

A command wrapped in :func:`friendly_errors` never ends in a traceback for an error cellsdk raises on purpose
(:class:`~cellsdk.errors.CellSDKError`) or an OS error: it prints ``Error: <one line>`` and exits 1. Ctrl-C and
SIGTERM unwind the stack (so staging folders and temporary files are removed) and exit 130 / 143; a closed pipe
(``cellsdk predict DIR | head``) exits 0 quietly.

Exit codes: 0 success; 1 an error, a failed check or an image that failed; 2 a usage error (click's);
128 + N a signal.

Examples:
    >>> from cellsdk.errors import ConfigError
    >>> @friendly_errors
    ... def command():
    ...     raise ConfigError("--batch 0: use a whole number of at least 1")
    >>> try:
    ...     command()
    ... except click.ClickException as err:
    ...     print(err.exit_code, err.message)
    1 --batch 0: use a whole number of at least 1
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import click

from cellsdk._capture import console_stream
from cellsdk._io import pending_cleanups, remove_registered
from cellsdk.errors import CellSDKError, CpuVerificationWarning, describe_os_error

__all__ = ["exit_terminated", "friendly_errors", "setup_logging", "show_warnings_in_one_line",
           "terminate_as_interrupt"]


def friendly_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn cellsdk errors and OS errors into a one-line message and exit status 1 (see the module's doc).

    Examples:
        >>> @friendly_errors
        ... def command():
        ...     raise OSError(2, "No such file or directory", "cells.txt")
        >>> try:
        ...     command()
        ... except click.ClickException as err:
        ...     print(err.message[:9])
        cells.txt
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with terminate_as_interrupt():
                return function(*args, **kwargs)
        except CellSDKError as err:
            raise click.ClickException(str(err)) from None
        except BrokenPipeError:  # e.g. `cellsdk predict DIR | head`: the reader left; not an error of ours
            _silence_stdout()
            raise SystemExit(0) from None
        except OSError as err:
            raise click.ClickException(describe_os_error(err)) from None
        except _Terminated:  # the stack has unwound (temporary files removed); leave without interpreter
            exit_terminated()  # teardown, which can crash inside native libraries interrupted mid-call
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing half-written was left behind") from None

    return wrapper


def exit_terminated(signum: int = signal.SIGTERM) -> None:
    """Remove registered staging paths, say so on the real terminal, and exit 128 + signum without teardown.

    Examples:
        >>> exit_terminated()  # doctest: +SKIP
    """
    remove_registered()
    stream = console_stream()  # the terminal even while a conversion sends fds 1 and 2 to its tool log
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"Error: {what}; nothing half-written was left behind\n")
        stream.flush()
        sys.stdout.flush()
    os._exit(128 + signum)


UNWIND_SECONDS = 10.0
"""After SIGTERM, how long the stack may take to unwind (cleanups) before the process exits 143 regardless."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup (staging folders, temporary files) runs."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds the stack like Ctrl-C instead of killing the process mid-write.

    Inside native-heavy work that registered its staging folder (a conversion; see
    :func:`cellsdk._io.remove_on_terminate`), SIGTERM and Ctrl-C instead remove what is registered and exit at
    once: an interrupt unwound through torch's exporter can crash the process (SIGSEGV), and OpenVINO can turn
    it into an ordinary error that fails an artefact instead of stopping the conversion.

    Examples:
        >>> import signal
        >>> with terminate_as_interrupt():
        ...     signal.getsignal(signal.SIGTERM).__name__
        'on_term'
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        if pending_cleanups():
            exit_terminated(signum)
        watchdog = threading.Timer(UNWIND_SECONDS, exit_terminated, args=(signum,))
        watchdog.daemon = True  # a stack that does not unwind in time (a thread it waits for is stuck) still exits
        watchdog.start()
        raise _Terminated()

    def on_int(signum: int, frame: Any) -> None:
        if pending_cleanups():
            exit_terminated(signum)
        raise KeyboardInterrupt()

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when Ctrl-C is ignored or handled
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def setup_logging(quiet: bool) -> None:
    """cellsdk's own progress messages at INFO; third-party libraries only from WARNING (their INFO chatter,
    e.g. ONNX export optimiser passes, is not for the user).

    Examples:
        >>> import logging
        >>> setup_logging(quiet=True)
        >>> logging.getLogger("cellsdk").level == logging.WARNING
        True
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    logging.getLogger("cellsdk").setLevel(logging.WARNING if quiet else logging.INFO)
    logging.captureWarnings(False)
    show_warnings_in_one_line()


def show_warnings_in_one_line() -> None:
    """cellsdk's warnings (e.g. an int8 model on an unverified CPU class) as ``warning: ...`` lines, no source line.

    Examples:
        >>> import warnings
        >>> show_warnings_in_one_line()
        >>> getattr(warnings.showwarning, "_cellsdk", False)
        True
    """
    original = warnings.showwarning
    if getattr(original, "_cellsdk", False):
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, CpuVerificationWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    show._cellsdk = True  # type: ignore[attr-defined]
    warnings.showwarning = show


"""Command-line tools: ``cellsdk`` (a group) and ``cellsdk-train``, ``-eval``, ``-calibrate``, ``-convert``, ``-bench``.

One module per command family (:mod:`~cellsdk.cli.train`, :mod:`~cellsdk.cli.evaluate`,
:mod:`~cellsdk.cli.predict`, :mod:`~cellsdk.cli.convert`, :mod:`~cellsdk.cli.bench`, :mod:`~cellsdk.cli.serve`,
:mod:`~cellsdk.cli.info`); the option groups they share in :mod:`~cellsdk.cli.options`; the process plumbing
(errors to one line, signals, exit codes) in :mod:`~cellsdk.cli.process`. Each command parses its options, calls
one public function of the Python API and prints. Errors cellsdk raises on purpose become one line on stderr and
a non-zero exit, never a traceback.

Examples:
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(cli, ["--version"]).output.startswith("cellsdk")
    True
"""

from __future__ import annotations

from cellsdk.cli.adapt import adapt_command
from cellsdk.cli.bench import bench_command
from cellsdk.cli.convert import convert_command, verify_command
from cellsdk.cli.evaluate import eval_command
from cellsdk.cli.info import devices_command, info_command
from cellsdk.cli.options import group
from cellsdk.cli.predict import predict_command
from cellsdk.cli.serve import serve_command
from cellsdk.cli.train import calibrate_command, train_command

__all__ = [
    "adapt_command",
    "bench_command",
    "calibrate_command",
    "cli",
    "convert_command",
    "devices_command",
    "eval_command",
    "info_command",
    "predict_command",
    "serve_command",
    "train_command",
    "verify_command",
]


@group()
def cli() -> None:
    """cellsdk: train, convert, verify, run and benchmark microscopy cell classifiers.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> "predict" in CliRunner().invoke(cli, ["--help"]).output
        True
    """


for _command in (train_command, adapt_command, eval_command, calibrate_command, predict_command, info_command, convert_command,
                 verify_command, bench_command, serve_command, devices_command):
    cli.add_command(_command)

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"cli": cli.callback.__doc__}

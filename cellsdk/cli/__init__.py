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

import importlib
from typing import Any

import click

from cellsdk.cli.options import group

__all__ = [
    "adapt_command",
    "bench_command",
    "calibrate_command",
    "cli",
    "convert_command",
    "count_command",
    "devices_command",
    "eval_command",
    "export_command",
    "info_command",
    "predict_command",
    "prune_command",
    "serve_command",
    "train_command",
    "verify_command",
]

#: command name -> (module, attribute): a command's module is imported only when that command runs (or for the
#: group's --help), so ``cellsdk predict`` does not pay for training, conversion or serving imports
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cellsdk.cli.train", "train_command"),
    "adapt": ("cellsdk.cli.adapt", "adapt_command"),
    "eval": ("cellsdk.cli.evaluate", "eval_command"),
    "calibrate": ("cellsdk.cli.train", "calibrate_command"),
    "prune": ("cellsdk.cli.train", "prune_command"),
    "predict": ("cellsdk.cli.predict", "predict_command"),
    "count": ("cellsdk.cli.count", "count_command"),
    "info": ("cellsdk.cli.info", "info_command"),
    "convert": ("cellsdk.cli.convert", "convert_command"),
    "export": ("cellsdk.cli.export", "export_command"),
    "verify": ("cellsdk.cli.convert", "verify_command"),
    "bench": ("cellsdk.cli.bench", "bench_command"),
    "serve": ("cellsdk.cli.serve", "serve_command"),
    "devices": ("cellsdk.cli.info", "devices_command"),
}
_ATTRIBUTES = {attribute: module for module, attribute in COMMANDS.values()}


def __getattr__(name: str) -> Any:
    """``cellsdk.cli.predict_command`` and the other commands (the console scripts' entry points), imported on
    first use."""
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LazyGroup(click.Group):
    """A group that imports a sub-command's module when the sub-command is asked for.

    Examples:
        >>> sorted(cli.list_commands(None))[:3]
        ['adapt', 'bench', 'calibrate']
    """

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, attribute = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return self.commands.get(name)


@group(cls=LazyGroup)
def cli() -> None:
    """cellsdk: train, convert, verify, run and benchmark microscopy cell classifiers.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> "predict" in CliRunner().invoke(cli, ["--help"]).output
        True
    """


#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"cli": cli.callback.__doc__}

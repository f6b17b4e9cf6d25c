"""Option types and the option groups several commands share, each defined once.

Examples:
    >>> @click.command()
    ... @dataset_options(split="val")
    ... @quiet_option()
    ... def command(**options):
    ...     click.echo(sorted(options))
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(command, ["--data", "d"]).output
    "['data', 'data_cropped', 'labels', 'quiet', 'split']\\n"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cellsdk._version import __version__

__all__ = [
    "CONTEXT", "NON_NEGATIVE", "NON_NEGATIVE_FLOAT", "PERCENT", "POSITIVE", "POSITIVE_FLOAT", "RUN_DEVICES", "SEED",
    "THREADS", "TORCH_DEVICES", "command", "data_cropped_option", "dataset_options", "gate_options", "group", "help_text",
    "labels_option", "model_option", "parse_key_values", "quiet_option", "run_options", "split_list",
    "strict_option",
]

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"]}
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
SEED = click.IntRange(0, 2**32 - 1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
THREADS = click.IntRange(1, 256)  # cellsdk.backends.MAX_THREADS
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)
PERCENT = click.FloatRange(0, 100)
RUN_DEVICES = ("auto, cpu, cuda[:N], tensorrt (onnxruntime), mps (torchscript), gpu / npu (openvino); "
               "`cellsdk devices` lists what works here.")
TORCH_DEVICES = "auto, cpu, cuda, cuda:N or mps (PyTorch)."


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several option decorators as one, in the order they are listed (the first is the first in --help)."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def command(name: str) -> Callable[[F], click.Command]:
    """A cellsdk command: ``-h`` / ``--help`` and ``--version`` on every one.

    Examples:
        >>> from click.testing import CliRunner
        >>> @command("hello")
        ... def hello():
        ...     click.echo("hi")
        >>> CliRunner().invoke(hello, ["--version"]).output.startswith("cellsdk")
        True
    """

    def make(function: F) -> click.Command:
        return click.command(name, context_settings=CONTEXT, help=help_text(function))(
            click.version_option(__version__, prog_name="cellsdk")(function))

    return make


def group(cls: type[click.Group] = click.Group) -> Callable[[F], click.Group]:
    """The ``cellsdk`` group: as :func:`command`, for a command with sub-commands.

    Examples:
        >>> from click.testing import CliRunner
        >>> @group()
        ... def tools():
        ...     '''Some tools.'''
        >>> CliRunner().invoke(tools, ["--help"]).output.splitlines()[2]
        '  Some tools.'
    """

    def make(function: F) -> click.Group:
        return click.group(cls=cls, context_settings=CONTEXT, help=help_text(function))(
            click.version_option(__version__, prog_name="cellsdk")(function))

    return make


def help_text(function: Callable[..., Any]) -> str:
    """A command's help: its docstring up to the form feed (``\\f``) that keeps the examples for doctest only.

    Examples:
        >>> def command():
        ...     \'\'\'Say hello.
        ...
        ...     \f
        ...     Examples: ...\'\'\'
        >>> help_text(command)
        'Say hello.'
    """
    return (inspect.getdoc(function) or "").partition("\f")[0].rstrip()


def quiet_option(help: str = "No progress bars or log.") -> Callable[[F], F]:
    """``--quiet``.

    Examples:
        >>> [p.name for p in quiet_option()(click.command()(lambda quiet: None)).params]
        ['quiet']
    """
    return click.option("--quiet", is_flag=True, help=help)


def labels_option(help: str = "Class names of the data, if its folders do not give them.") -> Callable[[F], F]:
    """``--labels``: a known label map (bloodmnist) or comma-separated names.

    Examples:
        >>> [p.name for p in labels_option()(click.command()(lambda labels: None)).params]
        ['labels']
    """
    return click.option("--labels", default=None, help=help)


def data_cropped_option(help: str = "The data's images already have the model's crop.") -> Callable[[F], F]:
    """``--data-cropped``: the images were cropped as the model's preprocessing would crop them.

    Examples:
        >>> [p.name for p in data_cropped_option()(click.command()(lambda data_cropped: None)).params]
        ['data_cropped']
    """
    return click.option("--data-cropped", is_flag=True, help=help)


def strict_option(help: str = "Refuse a model that failed verification, or an int8 model not verified on this "
                              "machine's CPU class.") -> Callable[[F], F]:
    """``--strict``.

    Examples:
        >>> [p.name for p in strict_option()(click.command()(lambda strict: None)).params]
        ['strict']
    """
    return click.option("--strict", is_flag=True, help=help)


def dataset_options(*, split: str | None = "test", required: bool = True,
                    data_help: str = "Dataset (.npz or image folder).", split_help: str | None = None
                    ) -> Callable[[F], F]:
    """``--data`` (and ``--split`` unless ``split`` is None), ``--data-cropped``, ``--labels``.

    Examples:
        >>> command = click.command()(dataset_options(split=None, required=False)(lambda **o: None))
        >>> [p.name for p in command.params]
        ['data', 'data_cropped', 'labels']
    """
    options = [click.option("--data", type=click.Path(path_type=Path), required=required, help=data_help,
                            **({} if required else {"default": None}))]
    if split is not None:
        options.append(click.option("--split", default=split, show_default=True, help=split_help))
    return _stack(*options, data_cropped_option(), labels_option())


def model_option() -> Callable[[F], F]:
    """``--model``: a file or a conversion folder, the shipped model by default.

    Examples:
        >>> [p.opts for p in model_option()(click.command()(lambda model_path: None)).params]
        [['--model']]
    """
    return click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                        help="A model file or a cellsdk-convert output folder [default: the shipped blood-cell "
                             "model].")


def run_options() -> Callable[[F], F]:
    """``--model``, ``--backend`` and ``--device`` of the commands that run a deployed model.

    Examples:
        >>> from click.testing import CliRunner
        >>> run = click.command()(run_options()(lambda **o: click.echo(sorted(o))))
        >>> CliRunner().invoke(run, []).output
        "['backend', 'device', 'model_path']\\n"
    """
    return _stack(model_option(),
                  click.option("--backend", default=None,
                               help="Force a backend: onnxruntime, openvino, torchscript, coreml."),
                  click.option("--device", default="auto", show_default=True, help=RUN_DEVICES))


def gate_options() -> Callable[[F], F]:
    """The verification gate's accuracy tolerances: ``--max-accuracy-drop``, ``--max-recall-drop`` (points).

    Examples:
        >>> from click.testing import CliRunner
        >>> gate = click.command()(gate_options()(lambda **o: click.echo(o["max_recall_drop"])))
        >>> CliRunner().invoke(gate, []).output
        '2.0\\n'
    """
    return _stack(click.option("--max-accuracy-drop", type=PERCENT, default=0.5, show_default=True, help="Points."),
                  click.option("--max-recall-drop", type=PERCENT, default=2.0, show_default=True,
                               help="Points, for every class."))


def split_list(*values: str | None) -> tuple[str, ...]:
    """Comma-separated values as a tuple, blanks dropped.

    Examples:
        >>> split_list("onnx, openvino,", "int8")
        ('onnx', 'openvino', 'int8')
    """
    return tuple(part.strip() for value in values if value for part in value.split(",") if part.strip())


def parse_key_values(pairs: tuple[str, ...], option: str = "--option") -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict; whole numbers become ints.

    Raises:
        click.ClickException: a pair without ``=``.

    Examples:
        >>> parse_key_values(("precision=f32", "threads=2"))
        {'precision': 'f32', 'threads': 2}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.ClickException(f"{option} {pair!r}: write KEY=VALUE, e.g. precision=f32")
        number = value.strip().removeprefix("-")
        options[key.strip()] = int(value) if number.isdecimal() else value.strip()  # isdigit() takes '¹', int() not
    return options

"""``cellsdk info`` (what a model says about itself) and ``cellsdk devices`` (what runs on this machine)."""

from __future__ import annotations

from pathlib import Path

import click

from cellsdk.cli.options import command
from cellsdk.cli.process import friendly_errors

__all__ = ["devices_command", "info_command"]


@command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the metadata document as JSON (the guard's arrays as dtype and shape).")
@friendly_errors
def info_command(path: Path, as_json: bool) -> None:
    """Describe a checkpoint, any model file or a conversion folder: metadata and the CPU classes it was verified on.

    Checkpoints are read without torch; a TorchScript archive needs torch.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> CliRunner().invoke(info_command, [str(default_model_path())]).output.splitlines()[0][:40]
        'bloodmnist_effnet_lite0_128.int8.onnx: t'
    """
    from cellsdk.artefacts.info import describe, metadata_json

    click.echo(metadata_json(path) if as_json else describe(path))


@command("devices")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of {device, runtime, available, detail}.")
@click.option("--require", "required", default=None, metavar="DEVICE",
              help="Exit 1 with the reason unless some runtime can use DEVICE (cpu, cuda, tensorrt, mps, coreml).")
@click.option("--no-torch", is_flag=True, help="Leave PyTorch out (importing it takes seconds).")
@friendly_errors
def devices_command(as_json: bool, required: str | None, no_torch: bool) -> None:
    """Which devices each runtime can use here (CPU class, NVIDIA driver, CUDA, TensorRT, MPS, OpenVINO, CoreML),
    and for each one that cannot, what to install.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(devices_command, ["--no-torch", "--require", "cpu"]).exit_code
        0
    """
    import json

    from cellsdk.platform.devices import device_report, format_device_report, require_device

    rows = device_report(torch=not no_torch)
    click.echo(json.dumps([row.to_dict() for row in rows], indent=2) if as_json else format_device_report(rows))
    if required:
        require_device(required, rows)

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"info_command": info_command.callback.__doc__, "devices_command": devices_command.callback.__doc__}

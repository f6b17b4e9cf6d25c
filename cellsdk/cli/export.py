"""``cellsdk export``: a model in another community's format — a bioimage.io model package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.cli.options import POSITIVE, command, data_cropped_option, quiet_option, split_list
from cellsdk.cli.process import friendly_errors, setup_logging

__all__ = ["export_command"]


@command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--bioimageio", "out", type=click.Path(path_type=Path), required=True,
              help="Write a bioimage.io model package (a .zip) here (replaced).")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="The checkpoint a conversion folder came from, for the state-dict weights [default: the "
                   "manifest's].")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Held-out data, when MODEL is a checkpoint: it is converted (ONNX, TorchScript) and verified first.")
@data_cropped_option()
@click.option("--weights", default="onnx,torchscript,pytorch_state_dict", show_default=True,
              help="Weights formats to include (onnx is always included).")
@click.option("--name", default=None, help="The package's name [default: from the model].")
@click.option("--author", "authors", multiple=True, help="An author's name; repeat for several.")
@click.option("--maintainer", "maintainers", multiple=True,
              help="A maintainer's GitHub user name (bioimage.io asks for one before an upload); repeat for several.")
@click.option("--license", "license_", default="CC-BY-4.0", show_default=True,
              help="SPDX licence identifier of the weights.")
@click.option("--model-card", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A Markdown model card appended to the package's documentation.")
@click.option("--test-images", type=POSITIVE, default=8, show_default=True,
              help="Held-out images in the test tensors (one per class first).")
@click.option("--test/--no-test", "run_test", default=False, show_default=True,
              help="Run bioimage.io's own test (bioimageio test) on the package after writing it.")
@quiet_option()
@friendly_errors
def export_command(model: Path, out: Path, checkpoint: Path | None, data: Path | None, weights: str, name: str | None,
                   authors: tuple[str, ...], maintainers: tuple[str, ...], license_: str, model_card: Path | None,
                   test_images: int, run_test: bool, quiet: bool, **options: Any) -> None:
    """Export MODEL (a conversion folder, or a checkpoint with --data) as a bioimage.io model package.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(export_command, ["--help"]).output.splitlines()[0]
        'Usage: export [OPTIONS] MODEL'
    """
    from cellsdk.converters.bioimageio import BioimageioConfig, export_bioimageio, test_package

    setup_logging(quiet)
    wanted = split_list(weights)
    config = BioimageioConfig(
        name=name, authors=authors or BioimageioConfig.authors, maintainers=maintainers, license=license_,
        test_images=test_images, weights=tuple(dict.fromkeys(("onnx", *wanted))), data=str(data) if data else None,
        data_cropped=options["data_cropped"], model_card=model_card.read_text(encoding="utf-8") if model_card else None)
    result = export_bioimageio(model, out, config, checkpoint=checkpoint)
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): weights {', '.join(result.weights)}")
    for note in result.notes:
        click.echo(f"  note: {note}")
    for line in result.not_expressed:
        click.echo(f"  not a spec operation (stated in its documentation): {line}")
    if run_test:
        passed, summary = test_package(result.path)
        click.echo(summary)
        if not passed:
            raise click.ClickException(f"{result.path} did not pass bioimage.io's test (see above)")

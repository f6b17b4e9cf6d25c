"""``cellsdk count``: fields of view in, a differential count out (:mod:`cellsdk.fields.count`)."""

from __future__ import annotations

from pathlib import Path

import click

from cellsdk.cli.common import load_classifier
from cellsdk.cli.options import THREADS, command, quiet_option, run_options, strict_option
from cellsdk.cli.process import friendly_errors

__all__ = ["count_command"]


@command("count")
@click.argument("fields", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, dir_okay=True), required=True,
              help="Folder for cells.csv, fields.jsonl, summary.json, report.html and the crops; an interrupted "
                   "count continues where it stopped.")
@run_options()
@click.option("--cells", "target", type=click.IntRange(1), default=None,
              help="Stop once this many white cells are counted (e.g. 100 or 200, like a manual differential) "
                   "[default: every field].")
@click.option("--rbc-diameter", type=click.FloatRange(0, min_open=True), default=None, metavar="PX",
              help="A red cell's diameter in the fields, in pixels, if known [default: measured on the first 10 "
                   "fields].")
@click.option("--training-rbc", type=click.FloatRange(0, min_open=True), default=None, metavar="PX",
              help="A red cell's diameter in the model's training images [default: the shipped model's, PBC: 74].")
@click.option("--parquet", is_flag=True, help="Also write cells.parquet (needs pyarrow).")
@click.option("--threads", type=THREADS, default=None, help="Inference threads [default: half the cores].")
@strict_option()
@quiet_option("No per-field progress on stderr.")
@friendly_errors
def count_command(fields: tuple[Path, ...], out_dir: Path, model_path: Path | None, backend: str | None, device: str,
                  target: int | None, rbc_diameter: float | None, training_rbc: float | None, parquet: bool,
                  threads: int | None, strict: bool, quiet: bool) -> None:
    """Find every white cell in FIELDS (image files, folders, multi-page TIFFs), classify each with the guard on
    and count them per class with 95 % intervals; the flagged cells are listed first in OUT/report.html. Exit
    status 1 if any field could not be read (the others are counted).

    Examples:
        >>> import tempfile
        >>> from click.testing import CliRunner
        >>> result = CliRunner().invoke(count_command, ["samples/pbc_raw/ig", "--out", tempfile.mkdtemp(), "--quiet"])
        >>> result.exit_code, result.stdout.splitlines()[0]
        (0, '2 white cells in 2 fields (0 without one); flagged 0')
    """
    from cellsdk.fields.count import CountConfig, count_fields
    from cellsdk.fields.crops import PBC_RBC_DIAMETER

    config = CountConfig(cells=target, rbc_diameter=rbc_diameter, training_rbc=training_rbc or PBC_RBC_DIAMETER,
                         parquet=parquet)
    classifier = load_classifier(model_path, backend=backend, device=device, threads=threads, top_k=1,
                                 strict=strict, ood="flag")
    progress = None if quiet else (lambda name: click.echo(f"counted {name}", err=True))
    result = count_fields(classifier, list(fields), out_dir, config, progress=progress)
    summary = result.summary
    click.echo(f"{summary['cells']} white cells in {summary['fields']['read']} fields "
               f"({summary['fields']['without_cells']} without one); flagged {summary['flagged']['cells']}")
    for entry in summary["differential"]:
        low, high = entry["ci95"]
        click.echo(f"{entry['label']:<14}{entry['cells']:>5}  {100 * entry['share']:5.1f} %  "
                   f"[{100 * low:.1f}-{100 * high:.1f}]  flagged {entry['flagged']}")
    for error in summary["fields"]["errors"]:
        click.echo(f"error: {error['error']}", err=True)
    click.echo(f"wrote {out_dir / 'report.html'}")
    if summary["fields"]["failed"]:
        raise SystemExit(1)

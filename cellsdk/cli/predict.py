"""``cellsdk predict``: classify images — printed, into a resumable result file, with explanations, or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.cli.common import load_classifier
from cellsdk.cli.options import POSITIVE, THREADS, command, quiet_option, run_options, strict_option
from cellsdk.cli.process import friendly_errors
from cellsdk.errors import ConfigError

__all__ = ["predict_command"]


@command("predict")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--from-list", "from_list", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="A file with one image path (or folder) per line; - reads standard input.")
@run_options()
@click.option("--threads", type=THREADS, default=None,
              help="Inference threads [default: half the cores, at least 1; with --engine ray, 1 per actor].")
@click.option("--top-k", type=POSITIVE, default=1, show_default=True, help="Classes to show per image.")
@click.option("--batch-size", type=POSITIVE, default=32, show_default=True, help="Images per runtime call.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Decoding threads, overlapped with inference [default: the cores --threads leaves, at least 1].")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Write one row per image to a .csv, .jsonl or .parquet file instead of printing; an interrupted "
                   "run continues where it stopped.")
@click.option("--overwrite", is_flag=True, help="With --out: start again instead of continuing.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine; ray: a Ray cluster (needs --out DIR.parquet and cellsdk[ray]).")
@click.option("--address", default=None, help="With --engine ray: the cluster (auto, ray://host:10001) "
              "[default: start a local one].")
@click.option("--actors", type=click.IntRange(1, 1024), default=None,
              help="With --engine ray: model replicas, one CPU each [default: 1].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@strict_option()
@click.option("--ood", "ood_mode", type=click.Choice(["flag", "reject", "off"]), default="flag", show_default=True,
              help="The model's out-of-distribution guard: flag (status and reasons beside the label), reject "
                   "(no label for images it flags) or off.")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write a heat-map overlay PNG per image (where the model looked) into this folder.")
@click.option("--pixel-size", type=click.FloatRange(0, min_open=True), default=None,
              help="Micrometres per pixel of IMAGES: rescale them to the training images' pixel size (models that "
                   "record it; see cellsdk info).")
@click.option("--collect", "collect_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also keep every image classified in DIR/unlabelled/ (once each, bytes unchanged): the lab's "
                   "unlabelled pool for cellsdk adapt --unlabelled DIR and cellsdk adapt --suggest.")
@quiet_option("No progress bar.")
@friendly_errors
def predict_command(images: tuple[Path, ...], from_list: Path | None, model_path: Path | None, backend: str | None,
                    device: str, threads: int | None, top_k: int, batch_size: int, workers: int | None,
                    out_path: Path | None, overwrite: bool, engine: str, address: str | None, actors: int | None,
                    as_json: bool, strict: bool, ood_mode: str, explain_dir: Path | None, pixel_size: float | None,
                    collect_dir: Path | None, quiet: bool) -> None:
    """Classify IMAGES (files or folders) and/or the paths in --from-list: one line per image, or a result file
    (--out). Exit status 1 if any image failed.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> result = CliRunner().invoke(predict_command, ["samples/pbc_raw/ig/MMY_163947.jpg", "--quiet"])
        >>> result.exit_code, result.stdout.split("\\t")[1][:3]
        (0, 'ig ')
    """
    if not images and from_list is None:
        raise click.UsageError("give IMAGES (files or folders) or --from-list FILE")
    if explain_dir is not None and (out_path is not None or engine == "ray"):
        raise click.UsageError("--explain writes overlays beside the printed predictions: leave out --out and "
                               "--engine ray")
    if pixel_size is not None and (out_path is not None or engine == "ray" or explain_dir is not None):
        raise click.UsageError("--pixel-size applies to the printed predictions: leave out --out, --engine ray "
                               "and --explain")
    if engine == "ray" and collect_dir is not None:
        raise click.UsageError("--collect keeps images on this machine: leave out --engine ray")
    if engine == "ray":
        from cellsdk.batch.distributed import parquet_name_problem, run_ray_job

        if out_path is None:
            raise click.UsageError("--engine ray writes Parquet: add --out DIR.parquet")
        problem = parquet_name_problem(out_path)
        if problem:  # a usage error (exit 2); run_ray_job raises the same line as a ConfigError
            raise click.UsageError(problem)
        summary = run_ray_job(images, out_path, model_path, from_list=from_list, overwrite=overwrite,
                              address=address, actors=actors or 1, batch_size=batch_size, threads=threads,
                              workers=workers, ood=ood_mode, strict=strict, backend=backend, device=device)
        _finish(summary.report(), failed=summary.errors)
        return
    for name, value in (("--address", address), ("--actors", actors)):
        if value is not None:
            raise click.UsageError(f"{name} is a Ray option: add --engine ray")
    if overwrite and out_path is None:
        raise click.UsageError("--overwrite goes with --out FILE")
    if len(images) == 1 and from_list is None and out_path is None and explain_dir is None and collect_dir is None \
            and Path(images[0]).is_file():
        _predict_one(Path(images[0]), model_path, as_json=as_json, pixel_size=pixel_size, backend=backend,
                     device=device, threads=threads, top_k=top_k, strict=strict, ood=ood_mode)
        return
    from cellsdk.batch.engine import default_split
    from cellsdk.batch.jobs import count_inputs, iter_inputs, run_job
    from cellsdk.prediction import one_line

    decoders, threads = default_split(runtime=threads)
    classifier = load_classifier(model_path, backend=backend, device=device, threads=threads, top_k=top_k,
                                 strict=strict, ood=ood_mode)
    inputs = iter_inputs(images, from_list)
    if collect_dir is not None:
        from cellsdk.pool import CellPool

        inputs = CellPool(collect_dir).keeping(inputs)
    workers = decoders if workers is None else workers
    if out_path is not None:
        summary = run_job(classifier, inputs, out_path, batch_size=batch_size, workers=workers, overwrite=overwrite,
                          progress=not quiet, total=None if quiet else count_inputs(images, from_list),
                          on_error=lambda path, reason: click.echo(f"error: {one_line(reason)}", err=True))
        _finish(summary.report(), failed=summary.errors)
        return
    if explain_dir is not None:
        _print_explanations(classifier, inputs, explain_dir, as_json=as_json)
        return
    _check_pixel_size(classifier, pixel_size)
    failed = 0
    for item in classifier.predict_iter(inputs, batch_size=batch_size, workers=workers, errors="skip",
                                        pixel_size=pixel_size):
        failed += _echo(item.source, item.value, item.error, as_json)
    _finish(None, failed=failed)


def _check_pixel_size(classifier: Any, pixel_size: float | None) -> None:
    if pixel_size is not None and classifier.metadata.preprocessing.pixel_size_um is None:
        raise ConfigError(f"{classifier.path.name} does not record its training images' pixel size, so "
                          "--pixel-size cannot rescale: leave it out (a model adapted with cellsdk adapt estimates "
                          "the scale from the cells)")


def _predict_one(path: Path, model_path: Any, *, as_json: bool, pixel_size: float | None, **load: Any) -> None:
    """One image file, the cold-start path: no decode threads to start and no job machinery to import (what
    ``predict_iter`` would print for it, the same line or the same error)."""
    from cellsdk.errors import InvalidImageError

    classifier = load_classifier(model_path, **load)
    _check_pixel_size(classifier, pixel_size)
    try:
        prediction, error = classifier.predict(path, pixel_size=pixel_size), None
    except InvalidImageError as err:
        prediction, error = None, err
    _finish(None, failed=_echo(str(path), prediction, error, as_json))


def _print_explanations(classifier: object, inputs: object, out_dir: Path, *, as_json: bool) -> None:
    """Each image's prediction line, and its overlay PNG in ``out_dir`` (a bad image is reported and skipped)."""
    from cellsdk.explain import save_explanations

    failed = 0
    for saved in save_explanations(classifier, inputs, out_dir):  # type: ignore[arg-type]
        prediction = saved.explanation.prediction if saved.explanation is not None else None
        extra = {} if saved.explanation is None else {
            "explanation": str(saved.file), **{f"explained_{k}": v for k, v in saved.explanation.to_dict().items()
                                               if k in ("target", "peak", "box")}}
        failed += _echo(saved.source, prediction, saved.error, as_json, extra, suffix=f"\t{saved.file}")
    _finish(None, failed=failed)


def _echo(source: object, prediction: object, error: object, as_json: bool, extra: dict | None = None,
          suffix: str = "") -> int:
    """Print one image's line (or its error); 1 for an error, else 0."""
    import json

    from cellsdk.prediction import format_prediction, one_line, prediction_record

    if error is not None or prediction is None:
        if as_json:
            click.echo(json.dumps({"path": str(source), "error": str(error)}))
        click.echo(f"error: {one_line(str(error))}", err=True)
        return 1
    if as_json:
        click.echo(json.dumps({**prediction_record(source, prediction), **(extra or {})}))  # type: ignore[arg-type]
    else:
        click.echo(format_prediction(source, prediction) + suffix)  # type: ignore[arg-type]
    return 0


def _finish(report: str | None, *, failed: int) -> None:
    """Print the job's report, and exit 1 if any image failed."""
    if report:
        click.echo(report)
    if failed:
        raise SystemExit(1)

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"predict_command": predict_command.callback.__doc__}

"""``cellsdk-bench`` / ``cellsdk bench``: latency against the targets, whole-folder throughput, or the service under
load (each mode one call to :mod:`cellsdk.benchmarks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.cli.options import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FLOAT,
    THREADS,
    command,
    data_cropped_option,
    quiet_option,
    split_list,
)
from cellsdk.cli.process import friendly_errors

__all__ = ["bench_command"]


@command("bench")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--device", "devices", default="auto", show_default=True,
              help="cpu,cuda,tensorrt,mps,coreml or auto (all).")
@click.option("--batch", "batches", default="1,32", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", type=THREADS, default=None, help="Inference threads (default: each runtime's).")
@click.option("--warmup", type=NON_NEGATIVE, default=10, show_default=True)
@click.option("--iterations", type=POSITIVE, default=100, show_default=True)
@click.option("--duration", type=POSITIVE_FLOAT, default=None, help="Seconds per measurement instead of --iterations.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Image folder: accuracy and macro-F1.")
@click.option("--data-split", default="test", show_default=True)
@data_cropped_option()
@click.option("--eval-limit", type=POSITIVE, default=None, help="Use at most this many images for accuracy.")
@click.option("--targets", "targets_file", type=click.Path(path_type=Path), default=None,
              help="Latency targets TOML [default: the mission's, benchmarks/targets.toml].")
@click.option("--no-eager", is_flag=True, help="Leave out the PyTorch eager fp32 reference rows.")
@click.option("--strict", is_flag=True, help="Leave out artefacts that failed verification (or int8 ones not "
              "verified on this CPU class) instead of measuring them and judging them FAIL.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for results.json / .md / .csv and latency.png (throughput.json / .md with --throughput).")
@click.option("--throughput", "throughput_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Instead: images/s, CPU use and peak memory over this folder for the local engine, the Ray "
                   "engine and a hand-written reference pipeline (MODELS: an ONNX model [default: the shipped one], "
                   "then any other artefacts of it, e.g. its OpenVINO int8 IR, each run by the local engine).")
@click.option("--splits", default=None, help="With --throughput: decode x runtime thread splits, e.g. 1x1,1x2 "
              "[default: every useful split of this machine's cores].")
@click.option("--ray-actors", default="1,2", show_default=True, help="With --throughput: Ray actor counts, or none.")
@click.option("--repeat", type=POSITIVE, default=1, show_default=True,
              help="With --throughput: go over the folder's images this many times.")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="With --throughput: runs of every configuration, interleaved (medians reported).")
@click.option("--serve-load", "serve_load_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Instead: load-test cellsdk serve on a loopback port with this folder's images, with and without "
                   "micro-batching, against in-process predict_batch (MODELS: at most one [default: the shipped "
                   "one]; --duration: seconds per mode [default: 60]).")
@click.option("--clients", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="With --serve-load: concurrent clients.")
@quiet_option()
@friendly_errors
def bench_command(models: tuple[Path, ...], devices: str, batches: str, out_dir: Path | None, quiet: bool,
                  throughput_dir: Path | None, splits: str | None, ray_actors: str, repeat: int, rounds: int,
                  serve_load_dir: Path | None, clients: int, **options: Any) -> None:
    """Benchmark MODELS (files or cellsdk-convert folders): latency, throughput, memory, accuracy, PASS/FAIL;
    or, with --throughput DIR, whole-folder throughput of every engine against a hand-written reference;
    or, with --serve-load DIR, the REST service under load.

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(bench_command, ["--help"]).output.splitlines()[0]
        'Usage: bench [OPTIONS] [MODELS]...'
    """
    progress = None if quiet else (lambda line: click.echo(line, err=True))
    if serve_load_dir is not None:
        from cellsdk.benchmarks.serve_load import (
            ServeLoadConfig,
            format_serve_load,
            run_serve_load,
            serve_load_failures,
            write_serve_load,
        )

        config = ServeLoadConfig(folder=str(serve_load_dir), model=_one_model(models, "--serve-load"),
                                 duration=options["duration"] or 60.0, clients=clients)
        report = run_serve_load(config, progress=progress)
        _report(format_serve_load(report), write_serve_load(report, out_dir) if out_dir is not None else [])
        failure = serve_load_failures(report)
        if failure:
            raise click.ClickException(failure)
        return
    if throughput_dir is not None:
        from cellsdk.benchmarks.throughput import ThroughputConfig, format_throughput, run_throughput, write_throughput

        throughput = ThroughputConfig.from_text(str(throughput_dir), str(models[0]) if models else None,
                                                others=tuple(str(m) for m in models[1:]), splits=splits,
                                                ray_actors=ray_actors, repeat=repeat, rounds=rounds)
        report = run_throughput(throughput, progress=progress)
        _report(format_throughput(report), write_throughput(report, out_dir) if out_dir is not None else [])
        return
    if not models:
        raise click.UsageError("give MODELS (files or cellsdk-convert folders), or --throughput DIR")
    from cellsdk.benchmarks import BenchConfig, bench_failure, format_table, parse_batches, run_benchmark, write_reports

    bench = BenchConfig(
        devices=() if devices.strip() == "auto" else split_list(devices), batches=parse_batches(batches),
        threads=options["threads"], warmup=options["warmup"], iterations=options["iterations"],
        duration=options["duration"], data=str(options["data"]) if options["data"] else None,
        data_split=options["data_split"], data_cropped=options["data_cropped"], eval_limit=options["eval_limit"],
        targets=str(options["targets_file"]) if options["targets_file"] else None, eager=not options["no_eager"],
        strict=options["strict"],
    )
    report = run_benchmark(models, bench, progress=not quiet)
    written = write_reports(report, out_dir).values() if out_dir is not None else []
    _report(format_table(report), written)
    failure = bench_failure(report, bench)
    if failure:
        raise click.ClickException(failure)


def _one_model(models: tuple[Path, ...], mode: str) -> str | None:
    if len(models) > 1:
        raise click.UsageError(f"{mode} measures one model: give at most one")
    return str(models[0]) if models else None


def _report(table: str, written: Any) -> None:
    click.echo(table)
    for path in written:
        click.echo(f"wrote {path}")

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"bench_command": bench_command.callback.__doc__}

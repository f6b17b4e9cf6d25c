"""``cellsdk serve``: the REST service and web page over one model (needs cellsdk[serve])."""

from __future__ import annotations

from pathlib import Path

import click

from cellsdk.cli.common import load_classifier
from cellsdk.cli.options import (
    NON_NEGATIVE_FLOAT,
    POSITIVE,
    POSITIVE_FLOAT,
    THREADS,
    command,
    run_options,
    strict_option,
)
from cellsdk.cli.process import friendly_errors

__all__ = ["serve_command"]


@command("serve")
@run_options()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Images per runtime call across concurrent requests (1: no micro-batching).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 10_000), default=5.0, show_default=True,
              help="At most how long queued images wait for admitted ones still being decoded (a lone request "
                   "never waits).")
@click.option("--max-queue", type=POSITIVE, default=256, show_default=True,
              help="Images in progress at once; beyond it requests get 503 with Retry-After.")
@click.option("--max-images", type=POSITIVE, default=64, show_default=True, help="Images in one request.")
@click.option("--max-upload-mb", type=POSITIVE_FLOAT, default=32.0, show_default=True, help="Request body limit.")
@click.option("--max-pixels", type=POSITIVE, default=None, help="Pixels in one image [default: the SDK's "
              "decompression-bomb limit, 64,000,000].")
@click.option("--top-k", type=POSITIVE, default=3, show_default=True, help="Classes per image unless a request "
              "says top_k.")
@click.option("--api-key", default=None, envvar="CELLSDK_API_KEY", show_envvar=True,
              help="Require this key (X-API-Key or Authorization: Bearer); prefer the environment variable.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow browser calls from this origin "
              "(repeat for several) [default: CORS off].")
@click.option("--threads", type=THREADS, default=None, help="Inference threads [default: half the cores].")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Decoding threads [default: the cores --threads leaves, at least 1].")
@click.option("--drain-seconds", type=NON_NEGATIVE_FLOAT, default=30.0, show_default=True,
              help="On SIGTERM, how long requests in flight may take to finish.")
@click.option("--max-connections", type=POSITIVE, default=512, show_default=True,
              help="Open connections; a new one beyond it closes the one idle the longest (503 only when all "
                   "are busy with requests).")
@click.option("--header-timeout", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Seconds for a request line and headers to arrive (slow or silent clients are closed).")
@click.option("--body-timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Longest pause, in seconds, while a request body arrives.")
@strict_option()
@click.option("--ood", "ood_mode", type=click.Choice(["flag", "reject", "off"]), default="flag", show_default=True,
              help="The model's out-of-distribution guard (see cellsdk predict --help).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="Server log level (info: every start and stop).")
@click.option("--keep-asked", is_flag=True,
              help="With --collect: also keep every cell /v1/predict is asked about in DIR/unlabelled/, the pool "
                   "cellsdk adapt --unlabelled learns from and the review page offers, most useful labels first.")
@click.option("--collect", "collect_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Review and collect: the page at /review saves each confirmed or corrected cell to "
                   "DIR/<label>/, a folder cellsdk adapt takes (needs --api-key).")
@friendly_errors
def serve_command(model_path: Path | None, backend: str | None, device: str, host: str, port: int, max_batch: int,
                  max_wait_ms: float, max_queue: int, max_images: int, max_upload_mb: float, max_pixels: int | None,
                  top_k: int, api_key: str | None, cors_origins: tuple[str, ...], threads: int | None,
                  workers: int | None, drain_seconds: float, max_connections: int, header_timeout: float,
                  body_timeout: float, strict: bool, ood_mode: str, log_level: str, collect_dir: Path | None,
                  keep_asked: bool) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /metrics, the web page at /
    and the API docs at /docs; with --collect, the review page at /review. Needs cellsdk[serve].

    \f
    Examples:
        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(serve_command, ["--help"]).output.splitlines()[0]
        'Usage: serve [OPTIONS]'
    """
    from cellsdk.batch.engine import default_split
    from cellsdk.serve import ServeConfig, require_serve_packages, serve

    require_serve_packages()
    decoders, threads = default_split(runtime=threads)
    config = ServeConfig(host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_images=max_images, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         top_k=top_k, api_key=api_key or None, cors_origins=cors_origins,
                         decode_workers=workers or decoders, drain_seconds=drain_seconds,
                         max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout,
                         collect_dir=str(collect_dir) if collect_dir is not None else None, keep_asked=keep_asked,
                         **({"max_pixels": max_pixels} if max_pixels else {})).check()
    classifier = load_classifier(model_path, backend=backend, device=device, threads=threads, top_k=top_k,
                                 strict=strict, ood=ood_mode)
    serve(classifier, config, log_level=log_level, announce=lambda line: click.echo(line, err=True))

#: the commands' docstring examples, for doctest (click turns the functions into Command objects)
__test__ = {"serve_command": serve_command.callback.__doc__}

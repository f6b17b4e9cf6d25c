"""The same prediction job on a Ray cluster (Ray Data; extra ``cellsdk[ray]``).

:func:`predict_files` reads the image files as a Ray dataset (``ray.data.read_binary_files``: local paths, and
any filesystem pyarrow reads, e.g. ``s3://bucket/slides/``), runs ``map_batches`` over a pool of actors that each
load the model once and classify their batches with the local engine (:meth:`Classifier.predict_iter`), and writes
Parquet: a folder of part files with exactly the columns of :mod:`cellsdk.batch.results`, in input order, so the rows
are those the local engine writes for the same images.

The model travels with the job: the driver loads it (choosing the artefact of a conversion folder, checking its
verification and CPU class as :meth:`Classifier.load` does) and puts the artefact's files in Ray's object store;
each actor writes them to a temporary folder and loads them. Workers need cellsdk and the model's runtime
installed, not the model file; the images must be readable from every node (a shared folder or object storage).

Examples:
    >>> from cellsdk.batch.distributed import predict_files
    >>> summary = predict_files(["samples/pbc_raw"], "runs/ray.parquet", actors=2)  # doctest: +SKIP
    >>> summary.rows  # doctest: +SKIP
    24
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsdk._capture import capture_tool_output
from cellsdk._io import artefact_files
from cellsdk._validate import require_int
from cellsdk.batch.jobs import JobSummary, iter_inputs, output_lock, path_key
from cellsdk.errors import BackendNotInstalledError, ConfigError
from cellsdk.preprocessing import IMAGE_EXTENSIONS

__all__ = ["RAY_INSTALL", "parquet_name_problem", "predict_files", "ray_unavailable_reason", "run_ray_job"]

RAY_INSTALL = "pip install 'cellsdk[ray]'"

log = logging.getLogger("cellsdk")

#: rows per ``map_batches`` call at least (measured on 2 cores, 2 actors, 3,200 images: 32 rows per call ran at
#: 66 images/s, 128 at 114; Ray's per-call cost dominated small calls)
ROWS_PER_CALL = 512


def ray_unavailable_reason() -> str | None:
    """Why the Ray engine cannot run here (Ray Data or pyarrow missing), or None.

    Examples:
        >>> ray_unavailable_reason() is None or "pip install" in ray_unavailable_reason()
        True
    """
    import importlib.util

    for package in ("ray", "pyarrow"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed: {RAY_INSTALL}"
    return None


def _require_ray() -> Any:
    reason = ray_unavailable_reason()
    if reason:
        raise BackendNotInstalledError(f"the Ray engine needs Ray Data: {reason}")
    import ray
    import ray.data

    return ray


class _Predictor:
    """A Ray actor: loads the classifier once, classifies each batch of ``{path, bytes}`` rows."""

    def __init__(self, files: dict[str, Any], main: str, options: dict[str, Any], ood: str, prefix: str,
                 workers: int | None, batch_size: int = 32) -> None:
        import ray

        from cellsdk.batch.results import parquet_schema, result_columns
        from cellsdk.classifier import Classifier

        self._folder = tempfile.mkdtemp(prefix="cellsdk-ray-model-")
        for name, ref in files.items():
            Path(self._folder, name).write_bytes(ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref)
        self.classifier = Classifier.load(Path(self._folder, main), ood=ood, **options)
        self.labels = list(self.classifier.labels)
        self.columns = result_columns(self.labels)
        self.schema = parquet_schema(self.columns)
        self.prefix, self.workers, self.batch_size = prefix, workers, batch_size

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        from cellsdk.batch.results import error_row, prediction_row

        paths = [self.prefix + str(p) for p in batch["path"]]
        data = [bytes(b) for b in batch["bytes"]]
        rows = []
        for item, path, payload in zip(self.classifier.predict_iter(data, batch_size=self.batch_size,
                                                                     workers=self.workers, errors="skip"),
                                       paths, data, strict=True):
            if item.value is not None:
                rows.append(prediction_row(path, item.value, self.labels))
            else:
                rows.append(error_row(path, _name_error(str(item.error), item.index, len(payload), path),
                                      self.labels))
        return pa.Table.from_pylist(rows, schema=self.schema)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)


def _name_error(message: str, index: int, size: int, path: str) -> str:
    """The local engine's wording for a bad file: ``<path>: <reason>`` (not ``input 3: <512 bytes>: ...``)."""
    for prefix in (f"input {index}: ", f"<{size} bytes>: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return f"{path}: {message}"


def _expand(paths: Sequence[str | os.PathLike]) -> tuple[list[str], str]:
    """Ray's paths and the prefix that turns what Ray reports back into the row's ``path``."""
    texts = [os.fspath(p) for p in paths]
    uris = [t for t in texts if "://" in t]
    if uris and len(uris) != len(texts):
        raise ConfigError("mix of URIs and local paths: give either local paths or URIs (s3://...) in one job")
    if uris:
        schemes = {t.split("://", 1)[0] for t in uris}
        if len(schemes) > 1:
            raise ConfigError(f"URIs of several filesystems ({', '.join(sorted(schemes))}): one per job")
        return uris, f"{schemes.pop()}://"
    local = [path_key(p) for p in iter_inputs(texts)]
    missing = [p for p in local if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(local)} paths are not files (first: {missing[0]}); "
                          "remove them, or use the local engine, which reports each and goes on")
    return local, ""


def predict_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike, model: str | os.PathLike | None = None,
                  *, address: str | None = None, actors: int = 1, batch_size: int = 32,
                  threads_per_actor: int | None = None, workers_per_actor: int | None = None,
                  ood: str = "flag", overwrite: bool = False, filesystem: Any = None, strict: bool = False,
                  **options: Any) -> JobSummary:
    """Classify image files on a Ray cluster; write one row per image to the Parquet folder ``out``.

    Args:
        paths: image files, folders (walked as the local engine walks them) or URIs (``s3://bucket/prefix``;
            a URI folder is read recursively by Ray).
        out: the Parquet folder to write (a ``.parquet`` name is conventional): a local path (on a multi-node
            cluster, one every node shares) or a URI pyarrow writes (``s3://bucket/results.parquet``).
        model: as :meth:`Classifier.load` (None: the shipped blood-cell model).
        address: the cluster (``auto``: the one ``ray start`` runs here; ``ray://host:10001``; None: start a
            local one for this job).
        actors: model replicas (each one CPU, the model loaded once).
        batch_size: images per runtime call in each actor (each ``map_batches`` call takes at least
            :data:`ROWS_PER_CALL` rows).
        threads_per_actor: the runtime's threads in each actor (default 1: one actor per CPU).
        workers_per_actor: decoding threads in each actor (default 1).
        ood: as :meth:`Classifier.load`.
        strict: as :meth:`Classifier.load`.
        **options: backend options, as :meth:`Classifier.load`.
        overwrite: replace ``out`` if it exists.
        filesystem: a ``pyarrow.fs.FileSystem`` for the URIs (default: from the URI).

    Returns:
        The :class:`cellsdk.batch.jobs.JobSummary` (per class, errors, flagged).

    Raises:
        BackendNotInstalledError: Ray Data is not installed. ConfigError: bad options, ``out`` exists.

    Examples:
        >>> summary = predict_files(["cells/"], "results.parquet", actors=2)  # doctest: +SKIP
        >>> summary.rows, summary.errors  # doctest: +SKIP
        (1600, 0)
    """
    from cellsdk.classifier import Classifier

    require_int("actors", actors, minimum=1, maximum=1024)
    require_int("batch_size", batch_size, minimum=1)
    target = os.fspath(out)
    remote = "://" in target  # an object-storage folder: Ray writes it, pyarrow reads the summary back
    if not remote and Path(target).exists() and not overwrite:
        raise ConfigError(f"{target} exists: pass overwrite=True (--overwrite) or another output")
    ray = _require_ray()
    options.setdefault("threads", 1 if threads_per_actor is None else threads_per_actor)
    # load here first: a bad model, option or CPU class fails before a cluster starts, and a folder's choice is made
    main = Classifier.load(model, ood=ood, strict=strict, **options).path
    uris, prefix = _expand(paths)
    # Ray's own cost per map_batches call is large: each call takes many rows, the runtime still gets batch_size
    rows_per_call = max(batch_size, ROWS_PER_CALL)
    started = time.perf_counter()
    log_path = Path(tempfile.gettempdir() if remote else Path(target).parent) / f"{Path(target).name}.ray.log"
    # a local output is locked like the local engine's: a second job on it is refused with this one's PID
    with (contextlib.nullcontext() if remote else output_lock(target)), \
            capture_tool_output(log_path) as captured:  # Ray's console output goes to the log, not the terminal
        owns = not ray.is_initialized()
        if owns:
            try:
                ray.init(address=address, include_dashboard=False, logging_level="ERROR")
            except ConnectionError as err:
                raise ConfigError(f"cannot reach the Ray cluster at {address} ({str(err).splitlines()[0]}): start "
                                  "one with `ray start --head`, check the address, and on a cluster with token "
                                  "authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN as its nodes do"
                                  ) from None
        try:
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True  # rows in input order, as the local engine writes
            context.enable_progress_bars = False
            files = {f.name: ray.put(f.read_bytes()) for f in artefact_files(main)}
            # reading is I/O: its tasks take no CPU slot, else actors holding every CPU would starve them. A listed
            # job reads two calls' worth of files per block: Ray's default for a file list, one block (one read
            # task) per file, cost more in scheduling than the inference
            blocks = None if prefix else max(actors, math.ceil(len(uris) / (rows_per_call * 2)))
            dataset = ray.data.read_binary_files(uris, include_paths=True, filesystem=filesystem, num_cpus=0,
                                                 override_num_blocks=blocks,
                                                 file_extensions=[e.lstrip(".") for e in sorted(IMAGE_EXTENSIONS)]
                                                 if prefix else None)
            results = dataset.map_batches(
                _Predictor, batch_size=rows_per_call, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
                fn_constructor_kwargs={"files": files, "main": main.name, "options": options, "ood": ood,
                                       "prefix": prefix, "workers": workers_per_actor or 1,
                                       "batch_size": batch_size})
            if not remote and Path(target).exists():
                shutil.rmtree(target) if Path(target).is_dir() else Path(target).unlink()
            results.write_parquet(target, mode="overwrite" if overwrite else "error")
        finally:
            if owns:
                ray.shutdown()
    log.info("cellsdk: Ray %s", captured.summary())
    return _summarise(target, time.perf_counter() - started)


def _summarise(target: str, seconds: float) -> JobSummary:
    import pyarrow.parquet as pq

    from cellsdk.batch.jobs import Tally

    tally = Tally()
    table = pq.read_table(target, columns=["label", "status", "error"])
    for row in table.to_pylist():
        tally.add(row)
    return JobSummary(out=Path(target), rows=tally.rows, resumed=0, per_class=dict(tally.per_class), flagged=tally.flagged,
                      errors=tally.errors, seconds=seconds)


def parquet_name_problem(out: str | os.PathLike) -> str | None:
    """Why ``out`` is no name for the Parquet folder the Ray engine writes (one line with the fix), or None.

    Examples:
        >>> parquet_name_problem("results.parquet") is None, parquet_name_problem("results.csv")
        (True, '--engine ray writes a Parquet folder, not .csv: use --out results.parquet')
    """
    target = Path(out)
    if target.suffix.lower() == ".parquet":
        return None
    return (f"--engine ray writes a Parquet folder, not {target.suffix or 'no suffix'}: use "
            f"--out {target.with_suffix('.parquet')}")


def run_ray_job(images: Sequence[str | os.PathLike], out: str | os.PathLike, model: str | os.PathLike | None = None,
                *, from_list: str | os.PathLike | None = None, threads: int | None = None, workers: int | None = None,
                backend: str | None = None, device: str | None = None, **options: Any) -> JobSummary:
    """``cellsdk predict --engine ray``: :func:`predict_files` over ``images`` and the paths listed in ``from_list``,
    with the local engine's names for the per-actor settings (``threads``, ``workers``).

    Raises:
        ConfigError: ``out`` is not a ``.parquet`` folder name; as :func:`predict_files`.

    Examples:
        >>> run_ray_job(["cells/"], "results.csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.errors.ConfigError: --engine ray writes a Parquet folder, not .csv: use --out results.parquet
    """
    from cellsdk.batch.jobs import iter_inputs

    target = Path(out)
    problem = parquet_name_problem(target)
    if problem:
        raise ConfigError(problem)
    if threads is not None:
        options["threads_per_actor"] = threads
    if workers is not None:
        options["workers_per_actor"] = workers
    for key, value in (("backend", backend), ("device", device)):
        if value not in (None, "auto"):
            options[key] = value
    listed = [str(p) for p in iter_inputs((), from_list)] if from_list is not None else []
    return predict_files([*map(str, images), *listed], target, model, **options)

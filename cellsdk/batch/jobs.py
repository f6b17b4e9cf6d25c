"""Large prediction jobs: a folder (or a list of paths) to a result file, resumable, with a per-class summary.

:func:`run_job` streams the inputs through the local engine (:meth:`Classifier.predict_iter`), appends a row per
image to a CSV, JSON Lines or Parquet file (see :mod:`cellsdk.batch.results`) batch by batch, and keeps a small job file
beside it (``results.csv.job.json``: the model, and the summary once the job is done). Run it again on the same
output and it continues where it stopped: images already in the file are not classified again, a torn last row is
dropped, and a file written by another model is refused. Memory stays flat whatever the number of images: the
inputs are walked lazily and only the engine's window of images is in flight.

A job writes **one row per distinct path**: a path listed (or reached) twice is classified once, in a first run
as in a resumed one, and the summary counts it once (``duplicates`` says how many repeats were skipped). While a
job runs it holds a lock on its output (``.results.csv.lock`` beside it, released when the process ends, even
killed): a second job on the same ``--out`` is refused with the first one's PID.

``cellsdk predict DIR --out results.csv`` and ``--from-list paths.txt`` are this module.

Examples:
    >>> from cellsdk import Classifier
    >>> summary = run_job(Classifier.load(), ["samples/pbc_raw"], "runs/results.csv")  # doctest: +SKIP
    >>> summary.per_class["neutrophil"]  # doctest: +SKIP
    3
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cellsdk._io import parse_json, sha256_file, write_json
from cellsdk._progress import progress_bar
from cellsdk._table import text_table
from cellsdk.batch.results import (
    error_row,
    open_writer,
    parts_folder,
    prediction_row,
    read_rows,
    result_columns,
    result_format,
    stored_text,
)
from cellsdk.errors import ConfigError, MetadataError
from cellsdk.preprocessing import IMAGE_EXTENSIONS

__all__ = ["JobSummary", "Tally", "count_inputs", "iter_inputs", "job_file", "lock_file", "output_lock", "path_key",
           "run_job"]

JOB_VERSION = 1


def _walk(folder: Path) -> Iterator[Path]:
    """The image files under ``folder``, depth first, each level sorted by name; hidden entries and symlinked
    folders are skipped, and a symlink with an image's name that leads nowhere (dangling, or a loop) is yielded so
    that it gets its error row. Lazy: one folder listing in memory at a time."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        raise ConfigError(f"{folder}: cannot list the folder ({err.strerror or err}); check its permissions") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and _file_or_broken_link(entry):
            yield Path(entry.path)


def _file_or_broken_link(entry: os.DirEntry[str]) -> bool:
    try:
        if entry.is_file():
            return True
    except OSError:  # a symlink loop: ELOOP
        return True
    return entry.is_symlink() and not os.path.exists(entry.path)


def _list_lines(path: str | os.PathLike) -> Iterator[str]:
    """The paths in a list file (one per line; blank lines and ``#`` comments skipped); ``-`` is standard input."""
    if str(path) == "-":
        handle: IO[str] = sys.stdin
    else:
        try:
            handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed below
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the list of paths ({err.strerror or err})") from None
    try:
        for line in handle:
            text = line.rstrip("\r\n").strip()
            if text and not text.startswith("#"):
                yield text
    finally:
        if handle is not sys.stdin:
            handle.close()


def iter_inputs(paths: Sequence[str | os.PathLike] = (), from_list: str | os.PathLike | None = None
                ) -> Iterator[Path]:
    """Image paths, lazily: files as given, folders walked (sorted, hidden entries skipped), then the paths
    listed in ``from_list`` (each a file or a folder; relative paths are relative to the current directory).

    Raises:
        ConfigError: a folder with no image files, or an unreadable list file.

    Examples:
        >>> [p.name for p in iter_inputs(["samples/pbc_raw/ig"])][:1]
        ['MMY_163947.jpg']
    """
    def expand(item: str | os.PathLike) -> Iterator[Path]:
        path = Path(item)
        if not path.is_dir():
            yield path  # a missing or unreadable file becomes that image's error, the rest go on
            return
        found = False
        for image in _walk(path):
            found = True
            yield image
        if not found:
            raise ConfigError(f"{path}: a folder with no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                              "pass image files or a folder that holds some")

    for item in paths:
        yield from expand(item)
    if from_list is not None:
        for line in _list_lines(from_list):
            yield from expand(line)


def count_inputs(paths: Sequence[str | os.PathLike] = (), from_list: str | os.PathLike | None = None) -> int | None:
    """How many images :func:`iter_inputs` will yield (a walk, nothing kept); None when the list is stdin.

    Examples:
        >>> count_inputs(["samples/pbc_raw"])
        16
    """
    if from_list is not None and str(from_list) == "-":
        return None
    return sum(1 for _ in iter_inputs(paths, from_list))


def job_file(out: str | os.PathLike) -> Path:
    """The job file kept beside a result file: ``results.csv`` → ``results.csv.job.json``.

    Examples:
        >>> job_file("runs/results.csv").name
        'results.csv.job.json'
    """
    out = Path(out)
    return out.with_name(f"{out.name}.job.json")


def lock_file(out: str | os.PathLike) -> Path:
    """The lock a running job holds on its output: ``results.csv`` → ``.results.csv.lock``.

    Examples:
        >>> lock_file("runs/results.csv").name
        '.results.csv.lock'
    """
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


def _try_lock(handle: IO[bytes]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on a job's output while the job runs; the operating system releases it when the process
    ends, however it ends, so a killed job never leaves a stale lock.

    Raises:
        ConfigError: another job (its PID named) holds it, or the lock cannot be created.

    Examples:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "results.csv"
        >>> with output_lock(out):
        ...     with output_lock(out):  # doctest: +ELLIPSIS
        ...         pass
        Traceback (most recent call last):
        ...
        cellsdk.errors.ConfigError: .../results.csv is being written by another cellsdk job (PID ...): ...
    """
    path = lock_file(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            handle = open(path, "a+b")  # noqa: SIM115 - closed below, or kept open while the job runs
        except OSError as err:
            raise ConfigError(f"{path}: cannot create the job's lock ({err.strerror or err}); check that the "
                              "folder is writable") from None
        if not _try_lock(handle):
            handle.seek(0)
            pid = handle.read(32).decode("ascii", "replace").strip() or "unknown"
            handle.close()
            raise ConfigError(f"{out} is being written by another cellsdk job (PID {pid}): wait for it to "
                              "finish, stop it, or give this job another --out")
        try:  # the file may have been removed by the job that held it just before we locked: lock the new one
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode("ascii"))
        handle.flush()
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def path_key(path: str | os.PathLike) -> str:
    """How a result row names an image: a URI as it is, a local path made absolute (symlinks kept).

    Examples:
        >>> path_key("s3://bucket/cell.jpg"), Path(path_key("cell.jpg")).is_absolute()
        ('s3://bucket/cell.jpg', True)
    """
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(text)


@dataclass(frozen=True)
class JobSummary:
    """What a job did.

    Attributes:
        out: the result file.
        rows: rows in the file (images classified or failed, this run and earlier ones).
        resumed: rows that were already there when this run started.
        per_class: images per predicted label (rejected images under ``(rejected)``).
        flagged: images the OOD guard flagged (status not ``ok``).
        errors: images that could not be classified.
        seconds: this run's wall time.
        complete: False when the run was interrupted (run it again to continue).
        duplicates: inputs this run skipped because their path already has a row (one row per distinct path).
    """

    out: Path
    rows: int
    resumed: int
    per_class: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    errors: int = 0
    seconds: float = 0.0
    complete: bool = True
    duplicates: int = 0

    @property
    def new(self) -> int:
        """Rows this run added."""
        return self.rows - self.resumed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        Examples:
            >>> JobSummary(Path("r.csv"), rows=3, resumed=1).to_dict()["new"]
            2
        """
        return {"out": str(self.out), "rows": self.rows, "resumed": self.resumed, "new": self.new,
                "per_class": self.per_class, "flagged": self.flagged, "errors": self.errors,
                "seconds": round(self.seconds, 3), "complete": self.complete, "duplicates": self.duplicates}

    def table(self) -> str:
        """The per-class summary as a small text table.

        Examples:
            >>> print(JobSummary(Path("r.csv"), rows=3, resumed=0, per_class={"a": 2, "b": 1}).table())
            class  images  share
            a           2  66.7%
            b           1  33.3%
            total       3
        """
        classified = sum(self.per_class.values())
        rows: list[list[Any]] = [[label, count, f"{count / max(classified, 1) * 100:.1f}%"]
                                 for label, count in sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.errors:
            rows.append(["(errors)", self.errors, ""])
        rows.append(["total", self.rows, f"({self.flagged} flagged by the OOD guard)" if self.flagged else ""])
        return text_table(["class", "images", "share"], rows, align="lrr" if not self.flagged else "lrl")

    def report(self) -> str:
        """:meth:`table` and one line saying what was written, how much was new and how fast (what ``cellsdk
        predict --out`` prints).

        Examples:
            >>> print(JobSummary(Path("r.csv"), rows=3, resumed=1, per_class={"a": 3}, seconds=2.0).report())
            ... # doctest: +NORMALIZE_WHITESPACE
            class  images   share
            a           3  100.0%
            total       3
            wrote r.csv (summary in r.csv.job.json): 3 rows, 2 new, 1 from an earlier run; 2.0 s, 1 images/s
        """
        resumed = f", {self.resumed} from an earlier run" if self.resumed else ""
        if self.duplicates:
            resumed += f", {self.duplicates} repeated path{'s' if self.duplicates != 1 else ''} skipped"
        rate = self.new / self.seconds if self.seconds > 0 else 0.0
        where = (f"{self.out}/ (a Parquet folder)" if self.out.is_dir() else
                 f"{self.out} (summary in {job_file(self.out).name})")
        return (f"{self.table()}\nwrote {where}: {self.rows} rows, {self.new} new{resumed}; {self.seconds:.1f} s, "
                f"{rate:.0f} images/s")


class Tally:
    """Running counts of result rows: rows, per predicted class, flagged, errors."""

    def __init__(self) -> None:
        self.rows = 0
        self.per_class: Counter[str] = Counter()
        self.flagged = 0
        self.errors = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if row.get("error"):
            self.errors += 1
            return
        self.per_class[row.get("label") or "(rejected)"] += 1
        if row.get("status") not in (None, "ok"):
            self.flagged += 1


def _identity(classifier: Any) -> dict[str, Any]:
    return {"model": str(classifier.path), "model_sha256": sha256_file(classifier.path)
            if Path(classifier.path).is_file() else None, "ood": classifier.ood, "labels": list(classifier.labels)}


def _check_same_job(out: Path, identity: dict[str, Any]) -> None:
    path = job_file(out)
    if not path.exists():
        return
    try:
        recorded = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MetadataError(f"{path}: unreadable job file ({err}); use another --out or --overwrite") from None
    before = recorded.get("job", {}) if isinstance(recorded, dict) else {}
    for key, what in (("model_sha256", "model"), ("labels", "labels"), ("ood", "--ood mode")):
        if before.get(key) is not None and before.get(key) != identity[key]:
            raise ConfigError(f"{out} holds results of another {what} ({before.get('model')}, ood "
                              f"{before.get('ood')}); pass --overwrite to start again, or another --out")


def _remove_outputs(out: Path) -> None:
    import shutil

    for path in (out, job_file(out)):
        if path.exists():
            path.unlink()
    shutil.rmtree(parts_folder(out), ignore_errors=True)


def run_job(classifier: Any, inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, batch_size: int = 32,
            workers: int | None = None, overwrite: bool = False, progress: bool = True, total: int | None = None,
            on_error: Callable[[str, str], None] | None = None) -> JobSummary:
    """Classify ``inputs`` into the result file ``out``, continuing an earlier run of the same job.

    Args:
        classifier: a loaded :class:`cellsdk.Classifier`.
        inputs: image paths (e.g. :func:`iter_inputs`), read lazily.
        out: ``.csv``, ``.jsonl`` or ``.parquet`` (Parquet needs pyarrow).
        batch_size: images per runtime call (see :meth:`Classifier.predict_iter`).
        workers: decoding threads (see :meth:`Classifier.predict_iter`).
        overwrite: start again instead of continuing what ``out`` holds.
        progress: show a progress bar (``total`` images, if known).
        on_error: called with (path, reason) for each image that cannot be classified (it gets an error row).

    Returns:
        The :class:`JobSummary` (also written to the job file beside ``out``).

    Raises:
        ConfigError: ``out`` holds another model's results, or a bad option.
        MetadataError: ``out`` is not a cellsdk result file.

    Examples:
        >>> from cellsdk import Classifier
        >>> summary = run_job(Classifier.load(), iter_inputs(["samples/pbc_raw"]), "results.csv")  # doctest: +SKIP
        >>> summary.rows, summary.errors  # doctest: +SKIP
        (16, 0)
    """
    out = Path(out)
    result_format(out)
    with output_lock(out):
        return _run_locked(classifier, inputs, out, batch_size=batch_size, workers=workers, overwrite=overwrite,
                           progress=progress, total=total, on_error=on_error)


def _run_locked(classifier: Any, inputs: Iterable[str | os.PathLike], out: Path, *, batch_size: int,
                workers: int | None, overwrite: bool, progress: bool, total: int | None,
                on_error: Callable[[str, str], None] | None) -> JobSummary:
    identity = _identity(classifier)
    labels = list(classifier.labels)
    columns = result_columns(labels)
    if overwrite:
        _remove_outputs(out)
    _check_same_job(out, identity)
    tally, done = Tally(), set()
    for row in read_rows(out, columns, repair=True):
        done.add(row["path"])
        tally.add(row)
    resumed = tally.rows
    started = time.perf_counter()
    write_json(job_file(out), {"cellsdk_job": JOB_VERSION, "job": identity, "complete": False})
    writer = open_writer(out, columns)
    bar = progress_bar(total if total is not None else 0, f"classifying into {out.name}", enabled=progress)
    if resumed:
        bar.update(min(resumed, total) if total is not None else resumed)
    duplicates = 0

    def pending() -> Iterator[str]:
        """The inputs without a row yet, each distinct path once (as a resumed run sees them)."""
        nonlocal duplicates
        seen: set[str] = set()
        for key in map(path_key, inputs):
            stored = stored_text(key)
            if stored in seen:
                duplicates += 1
                continue
            seen.add(stored)
            if stored not in done:
                yield key

    complete = False
    rows: list[dict[str, Any]] = []
    try:
        # the engine gets the rows' own names, so an error names the image as its row does (and as Ray's rows do)
        for item in classifier.predict_iter(pending(), batch_size=batch_size, workers=workers, errors="skip"):
            key = item.source
            if item.value is not None:
                row = prediction_row(key, item.value, labels)
            else:
                reason = str(item.error)
                row = error_row(key, reason, labels)
                if on_error is not None:
                    on_error(key, reason)
            tally.add(row)
            rows.append(row)
            if len(rows) >= batch_size:
                writer.write(rows)
                bar.update(len(rows))
                rows = []
        writer.write(rows)
        bar.update(len(rows) + duplicates)  # repeats were counted in the total
        rows = []
        complete = True
    finally:
        bar.close()
        if complete:
            writer.close()
        else:  # an interruption keeps every finished row for the next run
            try:
                writer.write(rows)
            finally:
                writer.abandon()
        summary = JobSummary(out=out, rows=tally.rows, resumed=resumed, per_class=dict(tally.per_class),
                             flagged=tally.flagged, errors=tally.errors, seconds=time.perf_counter() - started,
                             complete=complete, duplicates=duplicates)
        write_json(job_file(out), {"cellsdk_job": JOB_VERSION, "job": identity, "complete": complete,
                                   "summary": summary.to_dict()})
    return summary

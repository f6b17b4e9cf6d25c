"""Result files of large prediction jobs: one row per image, CSV, JSON Lines or Parquet, appendable and resumable.

Every engine (the local one in :mod:`cellsdk.batch.jobs`, Ray in :mod:`cellsdk.batch.distributed`) writes the same columns:

- ``path``: the image, as an absolute local path or a ``scheme://`` URI. A name that is not valid UTF-8 (a file
  named with the bytes ``caf\\xe9.jpg``) is stored with each undecodable byte as the text ``\\udcXX`` (Python's
  surrogate escape, written out: ``caf\\udce9.jpg``), so every format stays valid UTF-8 and no byte is lost;
  :func:`original_path` turns it back into a path ``open()`` accepts;
- ``label``, ``confidence``, ``status``, ``ood_score``, ``reasons`` (``; ``-joined): the :class:`Prediction`;
- ``error``: why the image could not be classified (empty otherwise; the prediction columns are then empty);
- ``p_<label>``: every class's probability, in the model's label order.

A writer appends complete rows and flushes them batch by batch, so a run that is killed leaves a file whose
complete rows are all valid; :func:`read_rows` drops a torn last row (in a CSV file, the last line break outside
a quoted field ends the last complete row: a file name may hold line breaks and quotes). Parquet, which cannot be appended to, is
written as numbered part files in a staging folder beside the target and joined into one file at the end.

Examples:
    >>> columns = result_columns(["a", "b"])
    >>> columns[:3], columns[-2:]
    (('path', 'label', 'confidence'), ('p_a', 'p_b'))
"""

from __future__ import annotations

import abc
import csv
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cellsdk._io import atomic_path
from cellsdk.errors import BackendNotInstalledError, ConfigError, MetadataError
from cellsdk.prediction import Prediction

__all__ = [
    "BASE_COLUMNS", "RESULT_FORMATS", "TEXT_COLUMNS", "ResultWriter", "error_row", "open_writer", "original_path",
    "prediction_row", "read_rows", "result_columns", "result_format", "stored_text",
]

#: the columns before the per-class probabilities
BASE_COLUMNS = ("path", "label", "confidence", "status", "ood_score", "reasons", "error")
#: the columns holding text (the others hold numbers)
TEXT_COLUMNS = frozenset({"path", "label", "status", "reasons", "error"})
#: file suffix to format
RESULT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
_PARQUET_INSTALL = "pip install 'cellsdk[parquet]' (pyarrow)"
_ESCAPED_BYTE = re.compile(r"\\udc([89a-f][0-9a-f])")


def stored_text(text: str) -> str:
    """``text`` as a result file stores it: unchanged, unless it holds undecodable bytes of a file name (Python's
    surrogate escapes, as ``os.listdir`` returns them), which are written out as ``\\udcXX``.

    Examples:
        >>> stored_text("cell.jpg"), stored_text(os.fsdecode(b"caf\\xe9.jpg"))
        ('cell.jpg', 'caf\\\\udce9.jpg')
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def original_path(stored: str) -> str:
    """The path a result row's ``path`` names, as ``open()`` and ``os.fsencode`` take it (the reverse of
    :func:`stored_text` for a file name that was not valid UTF-8).

    Examples:
        >>> os.fsencode(original_path("caf\\\\udce9.jpg"))
        b'caf\\xe9.jpg'
        >>> original_path("cell.jpg")
        'cell.jpg'
    """
    return _ESCAPED_BYTE.sub(lambda match: chr(0xDC00 + int(match[1], 16)), stored)


def result_columns(labels: Sequence[str]) -> tuple[str, ...]:
    """The columns of a result file for a model with these labels.

    Examples:
        >>> result_columns(["a", "b"])[:3], result_columns(["a", "b"])[-2:]
        (('path', 'label', 'confidence'), ('p_a', 'p_b'))
    """
    return (*BASE_COLUMNS, *(f"p_{label}" for label in labels))


def result_format(path: str | os.PathLike) -> str:
    """``csv``, ``jsonl`` or ``parquet``, from the file's suffix.

    Raises:
        ConfigError: another suffix.

    Examples:
        >>> result_format("out/results.jsonl")
        'jsonl'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in RESULT_FORMATS:
        raise ConfigError(f"{path}: results go to a .csv, .jsonl or .parquet file, not {suffix or 'no suffix'}")
    return RESULT_FORMATS[suffix]


def prediction_row(path: str, prediction: Prediction, labels: Sequence[str]) -> dict[str, Any]:
    """One result row for a classified image.

    Examples:
        >>> from cellsdk.prediction import Prediction
        >>> row = prediction_row("a.jpg", Prediction("b", 1, 0.75, {"a": 0.25, "b": 0.75}, (("b", 0.75),)), ["a", "b"])
        >>> row["label"], row["p_b"]
        ('b', 0.75)
    """
    row: dict[str, Any] = {"path": path, "label": prediction.label, "confidence": prediction.confidence,
                           "status": prediction.status, "ood_score": prediction.ood_score,
                           "reasons": "; ".join(prediction.reasons), "error": None}
    for label in labels:
        row[f"p_{label}"] = prediction.probabilities[label]
    return row


def error_row(path: str, error: str, labels: Sequence[str]) -> dict[str, Any]:
    """One result row for an image that could not be classified.

    Examples:
        >>> error_row("bad.jpg", "not an image", ["a"])["error"]
        'not an image'
    """
    row: dict[str, Any] = dict.fromkeys(result_columns(labels))
    row.update(path=path, reasons="", error=error)
    return row


class ResultWriter(abc.ABC):
    """Appends rows to a result file; :meth:`close` finishes it (Parquet: joins the parts)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = path, tuple(columns)

    @abc.abstractmethod
    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append complete rows and flush them to the OS (a killed run keeps them).

        Examples:
            >>> import tempfile
            >>> path = Path(tempfile.mkdtemp()) / "results.csv"
            >>> writer = open_writer(path, result_columns(["a"]))
            >>> writer.write([error_row("x.jpg", "not an image", ["a"])])
            >>> writer.close()
            >>> path.read_text().splitlines()[0][:22]
            'path,label,confidence,'
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Finish the file.

        Examples:
            >>> import tempfile
            >>> path = Path(tempfile.mkdtemp()) / "results.jsonl"
            >>> writer = open_writer(path, result_columns(["a"]))
            >>> writer.close()
            >>> path.exists()
            True
        """

    def abandon(self) -> None:
        """Stop writing without finishing (an interrupted run): what was written stays for a resume.

        Examples:
            >>> import tempfile
            >>> path = Path(tempfile.mkdtemp()) / "results.jsonl"
            >>> writer = open_writer(path, result_columns(["a"]))
            >>> writer.write([error_row("x.jpg", "not an image", ["a"])]); writer.abandon()
            >>> len(list(read_rows(path, result_columns(["a"]))))  # kept for the next run to continue
            1
        """
        self.close()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return stored_text(str(value))


def _stored(row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {c: stored_text(v) if isinstance(v, str) else v for c, v in ((c, row.get(c)) for c in columns)}


class _CsvWriter(ResultWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(self.columns)
            self._file.flush()

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._csv.writerows([[_text(row.get(c)) for c in self.columns] for row in rows])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _JsonlWriter(ResultWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self._file = path.open("a", encoding="utf-8")

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(_stored(row, self.columns)) + "\n" for row in rows))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BackendNotInstalledError(f"Parquet results need pyarrow, which is not installed: {_PARQUET_INSTALL}; "
                                       "or write .csv / .jsonl") from None
    return pyarrow


def parquet_schema(columns: Sequence[str]) -> Any:
    """The Arrow schema of a result file (strings and float64s, every column nullable)."""
    pa = _pyarrow()
    return pa.schema([(c, pa.string() if c in TEXT_COLUMNS else pa.float64()) for c in columns])


def parts_folder(path: Path) -> Path:
    """Where an unfinished Parquet result keeps its part files.

    Examples:
        >>> parts_folder(Path("runs/results.parquet")).name
        '.results.parquet.parts'
    """
    return path.with_name(f".{path.name}.parts")


class _ParquetWriter(ResultWriter):
    """Each :meth:`write` becomes one part file (atomically); :meth:`close` joins them with the target."""

    def __init__(self, path: Path, columns: Sequence[str], rows_per_part: int = 4096) -> None:
        super().__init__(path, columns)
        self._pa = _pyarrow()
        self._schema = parquet_schema(columns)
        self._parts = parts_folder(path)
        self._parts.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict[str, Any]] = []
        self._rows_per_part = rows_per_part
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in self._parts.glob("part-*.parquet")), default=-1)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._pending.extend(_stored(row, self.columns) for row in rows)
        if len(self._pending) >= self._rows_per_part:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = self._pa.Table.from_pylist(self._pending, schema=self._schema)
        with atomic_path(self._parts / f"part-{self._next:06d}.parquet") as tmp:
            self._pa.parquet.write_table(table, tmp)
        self._next += 1
        self._pending = []

    def abandon(self) -> None:
        self._flush()

    def close(self) -> None:
        self._flush()
        pq = self._pa.parquet
        sources = ([self.path] if self.path.exists() else []) + sorted(self._parts.glob("part-*.parquet"))
        with atomic_path(self.path) as tmp, pq.ParquetWriter(tmp, self._schema) as writer:
            for source in sources:  # one part at a time: memory stays bounded
                for batch in pq.ParquetFile(source).iter_batches():
                    writer.write_table(self._pa.Table.from_batches([batch], schema=self._schema))
        shutil.rmtree(self._parts, ignore_errors=True)


def open_writer(path: str | os.PathLike, columns: Sequence[str]) -> ResultWriter:
    """A writer appending to ``path`` (created if missing) in the format its suffix names.

    Raises:
        ConfigError: an unknown suffix. BackendNotInstalledError: Parquet without pyarrow.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.csv"
        >>> writer = open_writer(path, result_columns(["a"]))
        >>> writer.write([error_row("x.jpg", "not an image", ["a"])]); writer.close()
        >>> [row["error"] for row in read_rows(path, result_columns(["a"]))]
        ['not an image']
    """
    path = Path(path)
    kind = result_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        return _CsvWriter(path, columns)
    if kind == "jsonl":
        return _JsonlWriter(path, columns)
    return _ParquetWriter(path, columns)


def _last_row_end(path: Path, *, quoted: bool) -> int:
    """The size of ``path`` up to the end of its last complete row: just after its last line break (``quoted``:
    the last one outside a quoted CSV field, where a quote opens or closes a field an even number of quotes in).
    Reads the file once, a block at a time."""
    end = parity = 0
    position = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            if not quoted:
                cut = block.rfind(b"\n")
            else:
                cut = -1
                pieces = block.split(b'"')
                offset = 0
                for index, piece in enumerate(pieces):
                    if (parity + index) % 2 == 0:  # outside quotes
                        found = piece.rfind(b"\n")
                        if found >= 0:
                            cut = offset + found
                    offset += len(piece) + 1
                parity = (parity + len(pieces) - 1) % 2
            if cut >= 0:
                end = position + cut + 1
            position += len(block)
    return end


def _drop_torn_row(path: Path, *, quoted: bool) -> None:
    """Cut a text result file back to its last complete row (a run killed mid-write leaves half a row)."""
    size = path.stat().st_size
    if size == 0:
        return
    if not quoted:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
    end = _last_row_end(path, quoted=quoted)
    if end != size:
        with path.open("rb+") as handle:
            handle.truncate(end)


def _number(value: str) -> float | None:
    return None if value == "" else float(value)


def read_rows(path: str | os.PathLike, columns: Sequence[str], *, repair: bool = False) -> Iterator[dict[str, Any]]:
    """The complete rows of a result file (and of an unfinished Parquet's parts), one at a time.

    Args:
        path: the result file.
        columns: the columns this job writes; a file with others belongs to another model.
        repair: cut a torn last line off a CSV / JSON Lines file first (before appending to it).

    Raises:
        MetadataError: the file is not a result file with these columns.

    Examples:
        >>> list(read_rows("no-such-results.csv", result_columns(["a"])))
        []
    """
    path = Path(path)
    kind = result_format(path)
    if kind == "parquet":
        yield from _read_parquet(path, columns)
        return
    if not path.exists():
        return
    if repair:
        _drop_torn_row(path, quoted=kind == "csv")
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        if kind == "csv":
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            if tuple(header) != tuple(columns):
                raise MetadataError(_other_columns(path, header, columns))
            for values in reader:
                if len(values) != len(columns):
                    raise MetadataError(f"{path}: a row has {len(values)} fields, not {len(columns)}: the file was "
                                        "edited or is not a cellsdk result; use another --out or --overwrite")
                yield {c: (v or None) if c in TEXT_COLUMNS else _number(v) for c, v in zip(columns, values, strict=True)}
        else:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise MetadataError(f"{path}: line {number} is not JSON: the file was edited or is not a "
                                        "cellsdk result; use another --out or --overwrite") from None
                if not isinstance(row, dict) or tuple(row) != tuple(columns):
                    raise MetadataError(_other_columns(path, list(row) if isinstance(row, dict) else [], columns))
                yield row


def _read_parquet(path: Path, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    sources = ([path] if path.exists() else []) + sorted(parts_folder(path).glob("part-*.parquet"))
    if not sources:
        return
    pq = _pyarrow().parquet
    for source in sources:
        try:
            handle = pq.ParquetFile(source)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise MetadataError(f"{source}: not a readable Parquet file ({err}); use another --out or "
                                "--overwrite") from None
        if tuple(handle.schema_arrow.names) != tuple(columns):
            raise MetadataError(_other_columns(source, handle.schema_arrow.names, columns))
        for batch in handle.iter_batches():
            yield from batch.to_pylist()


def _other_columns(path: Path, found: Sequence[str], columns: Sequence[str]) -> str:
    classes = [c[2:] for c in found if c.startswith("p_")]
    return (f"{path}: its columns are not this model's ({len(classes)} classes: {', '.join(classes[:4])}"
            f"{' …' if len(classes) > 4 else ''} vs {len(columns) - len(BASE_COLUMNS)}); it holds another job's "
            "results: use another --out or --overwrite")

"""The local batch engine: decode and preprocess in a bounded pool of threads, overlapped with batched inference.

Pillow releases the GIL while it decodes and resizes, and the runtimes release it while they compute, so a
few threads preparing the next images keep the model busy with the current batch. The engine keeps at most
``batch_size * (prefetch + 1)`` images in flight (memory is bounded whatever the number of images), yields
results in input order, and reports an unusable image with its position and name: it raises
(``errors="raise"``) or yields the error in that image's place and goes on (``errors="skip"``).

:meth:`cellsdk.Classifier.predict_iter` (and ``predict_batch``, ``predict_proba``, ``cellsdk predict`` and
``cellsdk-eval``) run on it.

Examples:
    >>> results = run_pipeline(range(5), prepare=lambda x: x * 10, infer=lambda batch: [v + 1 for v in batch],
    ...                        batch_size=2, workers=2)
    >>> [(r.index, r.value) for r in results]
    [(0, 1), (1, 11), (2, 21), (3, 31), (4, 41)]
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cellsdk._validate import require_int
from cellsdk.errors import ConfigError, InvalidImageError

__all__ = ["ERROR_MODES", "Item", "default_split", "default_workers", "describe_source", "run_pipeline"]

ERROR_MODES = ("raise", "skip")
T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Item(Generic[R]):
    """One input's outcome: its position, the input itself, and the result or the error that replaced it."""

    index: int
    source: Any
    value: R | None = None
    error: InvalidImageError | None = None

    @property
    def ok(self) -> bool:
        """True when the input produced a result."""
        return self.error is None


def describe_source(index: int, source: Any) -> str:
    """How an error names an input: a path by itself, anything else by its position.

    Examples:
        >>> describe_source(3, "cells/a.jpg"), describe_source(3, b"...")
        ('cells/a.jpg', 'input 3')
    """
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"input {index}"


def default_split(cores: int | None = None, runtime: int | None = None) -> tuple[int, int]:
    """How a batch job splits the cores by default: (decoding threads, runtime threads).

    Half the cores (at least one) to the runtime, unless ``runtime`` says how many, the rest to decoding (at
    least one). Measured on a 2-core AVX2
    EPYC over the 1,600 PBC originals with the shipped INT8 ONNX: 1 decode / 1 runtime thread was the fastest
    split for cellsdk and for a hand-written pipeline alike; a second runtime thread spun on the core the decoder
    needed (see ``cellsdk-bench --throughput``).

    Examples:
        >>> default_split(2), default_split(16), default_split(2, runtime=2)
        ((1, 1), (8, 8), (1, 2))
    """
    cores = cores or os.cpu_count() or 2
    runtime = max(1, cores // 2) if runtime is None else runtime
    return max(1, cores - runtime), runtime


def default_workers() -> int:
    """Decode threads by default: one per core but one (left to the runtime's own threads), at least 1, at most 8.

    Measured on a 2-core AVX2 EPYC with the shipped model (1,600 PBC originals): 1 decode thread beat 2, whose
    decoding competed with ONNX Runtime's threads for the two cores.

    Examples:
        >>> 1 <= default_workers() <= 8
        True
    """
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def run_pipeline(
    sources: Iterable[T],
    *,
    prepare: Callable[[T], P],
    infer: Callable[[list[P]], Sequence[R]],
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = 2,
    errors: str = "raise",
    describe: Callable[[int, T], str] | None = None,
) -> Iterator[Item[R]]:
    """Prepare ``sources`` on ``workers`` threads and run ``infer`` on batches of them, yielding in input order.

    Args:
        sources: any iterable (read lazily: a generator of millions of paths is fine).
        prepare: one source to its model input; raises :class:`InvalidImageError` for an unusable one.
        infer: a list of prepared inputs to one result each (runs on the calling thread).
        batch_size: prepared inputs per ``infer`` call (the last batch may be smaller; a batch never waits for
            inputs beyond the ones in flight).
        workers: preparing threads (default :func:`default_workers`).
        prefetch: batches prepared ahead of the one being inferred.
        errors: ``raise`` (stop at the first unusable input, naming it) or ``skip`` (yield its error, go on).
        describe: how to name an input in an error (default: its position).

    Raises:
        InvalidImageError: ``errors="raise"`` and an input is unusable (message prefixed with its name).
        ConfigError: a bad option.

    Examples:
        >>> items = list(run_pipeline(["ok", "bad"], prepare=lambda s: s.upper(), infer=lambda batch: batch))
        >>> [item.value for item in items]
        ['OK', 'BAD']
    """
    require_int("batch_size", batch_size, minimum=1)
    require_int("prefetch", prefetch, minimum=0)
    workers = default_workers() if workers is None else require_int("workers", workers, minimum=1, maximum=256)
    if errors not in ERROR_MODES:
        raise ConfigError(f"errors={errors!r}: use one of {', '.join(ERROR_MODES)}")
    window = batch_size * (prefetch + 1)
    iterator = iter(enumerate(sources))
    pending: deque[tuple[int, T, Future[P]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cellsdk-decode")

    def fill() -> None:
        while len(pending) < window:
            try:
                index, source = next(iterator)
            except StopIteration:
                return
            pending.append((index, source, pool.submit(prepare, source)))

    finished = False
    try:
        fill()
        while pending:
            batch: list[tuple[int, T, P]] = []
            failed: list[Item[R]] = []
            while pending and len(batch) < batch_size:
                index, source, future = pending.popleft()
                try:
                    batch.append((index, source, future.result()))
                except InvalidImageError as err:
                    name = describe(index, source) if describe else f"input {index}"
                    error = InvalidImageError(str(err) if str(err).startswith(name) else f"{name}: {err}")
                    if errors == "raise":
                        raise error from None
                    failed.append(Item(index, source, error=error))
                fill()  # keep the pool busy while this batch is inferred
            results = infer([prepared for _, _, prepared in batch]) if batch else []
            if len(results) != len(batch):
                raise RuntimeError(f"infer returned {len(results)} results for {len(batch)} inputs")
            done = [Item(index, source, value=result) for (index, source, _), result in
                    zip(batch, results, strict=True)]
            yield from sorted(done + failed, key=lambda item: item.index)
        finished = True
    finally:
        # A consumer that stops early, an error or an interrupt (Ctrl-C, SIGTERM) cancels what has not started
        # and does not wait for the decoding threads (one stuck in a decoder would hold the process; each
        # finishes its current image on its own).
        pool.shutdown(wait=finished, cancel_futures=True)

"""Dynamic micro-batching: images from concurrent requests share runtime calls (framework-free, thread-based).

Requests :meth:`~MicroBatcher.admit` their images first (a bounded number are admitted at once, so the
backlog never grows without bound; a request that does not fit is told how long to wait), prepare them, then
submit them with the ticket admission gave. One inference thread takes the queued images and runs them in one
call of ``infer``, routing each result back to its request's future; a request's images are never split across
calls. It waits for more only while admitted images are still being prepared (they are on their way), and then
no longer than ``max_wait_ms`` after the oldest queued image arrived, or until ``max_batch`` are queued: under
load batches fill up, and a lone request never waits.

Examples:
    >>> batcher = MicroBatcher(lambda items: [x * 2 for x in items], max_batch=8, max_wait_ms=1, max_queue=16)
    >>> with batcher.admit(3) as ticket:
    ...     ticket.submit([1, 2, 3]).result(timeout=5)
    [2, 4, 6]
    >>> batcher.close()
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cellsdk._validate import require_float, require_int
from cellsdk.errors import CellSDKError

__all__ = ["BusyError", "MicroBatcher", "ShuttingDownError", "Ticket"]

P = TypeVar("P")
R = TypeVar("R")


class BusyError(CellSDKError):
    """The queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDownError(CellSDKError):
    """The batcher is closing and takes no new work."""


class Ticket(Generic[P, R]):
    """Room for a number of inputs, from :meth:`MicroBatcher.admit`; :meth:`submit` them once prepared."""

    def __init__(self, batcher: MicroBatcher[P, R], count: int) -> None:
        self._batcher = batcher
        self.count = count
        self.unsubmitted = count  # admitted, still being prepared: the batcher may wait for these

    def submit(self, items: list[P]) -> Future[list[R]]:
        """Queue prepared inputs; the future gets their results, in order (see :meth:`MicroBatcher.submit`).

        Examples:
            >>> batcher = MicroBatcher(lambda items: [x * 2 for x in items], max_batch=4, max_wait_ms=0)
            >>> with batcher.admit(2) as ticket:
            ...     ticket.submit([1, 2]).result()
            [2, 4]
            >>> batcher.close()
        """
        return self._batcher.submit(items, ticket=self)


@dataclass
class _Job(Generic[P, R]):
    items: list[P]
    future: Future[list[R]]
    queued_at: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[P, R]):
    """Batch prepared inputs from many callers into shared ``infer`` calls on one thread.

    Args:
        infer: prepared inputs to one result each (one runtime call); runs on the batcher's thread only.
        max_batch: inputs per call (1: each input alone, no batching).
        max_wait_ms: at most how long the oldest queued input waits for admitted inputs still being prepared.
        max_queue: inputs admitted at once (being prepared, queued or running).
        on_batch: called after each call with (inputs, seconds), e.g. for metrics.
    """

    def __init__(self, infer: Callable[[list[P]], Sequence[R]], *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None,
                 name: str = "cellsdk-infer") -> None:
        self._infer = infer
        self.max_batch = require_int("max_batch", max_batch, minimum=1)
        self.max_wait = require_float("max_wait_ms", max_wait_ms, minimum=0) / 1000
        self.max_queue = require_int("max_queue", max_queue, minimum=1)
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._jobs: deque[_Job[P, R]] = deque()
        self._queued = 0  # inputs in _jobs
        self._admitted = 0  # inputs admitted and not yet answered
        self._preparing = 0  # inputs admitted and not yet submitted
        self._closing = False
        self._stopped = False  # the thread has taken its last batch
        self._seconds_per_input = 0.005  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    @property
    def queued(self) -> int:
        """Inputs waiting for a runtime call."""
        return self._queued

    @property
    def admitted(self) -> int:
        """Inputs admitted and not yet answered (being prepared, queued or running)."""
        return self._admitted

    @property
    def preparing(self) -> int:
        """Inputs admitted and not yet submitted (being prepared): the batcher waits for these."""
        return self._preparing

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    @contextmanager
    def admit(self, count: int) -> Iterator[Ticket[P, R]]:
        """Reserve room for ``count`` inputs for the duration of the block; prepare them and submit them with
        the ticket inside it. Inputs the block never submits (it failed) stop counting when it ends.

        Raises:
            BusyError: admitting them would exceed ``max_queue`` (its ``retry_after`` estimates when to retry).
            ShuttingDownError: the batcher is closing.

        Examples:
            >>> batcher = MicroBatcher(lambda items: items, max_batch=2, max_wait_ms=0, max_queue=2)
            >>> with batcher.admit(2):
            ...     batcher.admit(1).__enter__()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.serve.batching.BusyError: ...
            >>> batcher.close()
        """
        with self._cond:
            if self._closing:
                raise ShuttingDownError("the service is shutting down; retry on another instance")
            if self._admitted + count > self.max_queue:
                wait = max(1, math.ceil((self._admitted + count) * self._seconds_per_input))
                raise BusyError(f"the service is busy ({self._admitted} images in progress, limit {self.max_queue}); "
                                f"retry in {wait} s", retry_after=wait)
            self._admitted += count
            self._preparing += count
        ticket: Ticket[P, R] = Ticket(self, count)
        try:
            yield ticket
        finally:
            with self._cond:
                self._admitted -= count
                self._preparing -= ticket.unsubmitted
                ticket.unsubmitted = 0
                self._cond.notify_all()  # the batcher need not wait for inputs that will never come

    def submit(self, items: list[P], *, ticket: Ticket[P, R] | None = None) -> Future[list[R]]:
        """Queue prepared inputs; the future gets their results, in order.

        Args:
            items: prepared inputs.
            ticket: the admission they came with (:meth:`admit`), so the batcher stops waiting for them.

        Raises:
            ShuttingDownError: the batcher has stopped.

        Examples:
            >>> batcher = MicroBatcher(lambda items: [x + 1 for x in items], max_batch=8, max_wait_ms=0)
            >>> batcher.submit([1, 2, 3]).result()
            [2, 3, 4]
            >>> batcher.close()
        """
        future: Future[list[R]] = Future()
        with self._cond:
            if ticket is not None:
                done = min(len(items), ticket.unsubmitted)
                ticket.unsubmitted -= done
                self._preparing -= done
            if not items:
                future.set_result([])
                self._cond.notify_all()
                return future
            if self._stopped:
                raise ShuttingDownError("the service has shut down")
            self._jobs.append(_Job(list(items), future))
            self._queued += len(items)
            self._cond.notify_all()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting; finish every queued input, then stop the thread (waiting up to ``timeout`` seconds).

        Examples:
            >>> batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=0)
            >>> batcher.close()
            >>> batcher.submit([1])  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.serve.batching.ShuttingDownError: ...
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the inference thread

    def _take(self) -> list[_Job[P, R]] | None:
        """The next batch of jobs: at once when it is full or nothing more is being prepared, else once its oldest
        job has waited ``max_wait`` for the images on their way; None when closed and drained."""
        with self._cond:
            while not self._jobs:
                if self._closing:
                    self._stopped = True  # under the lock: no job can slip in after this and wait forever
                    return None
                self._cond.wait()
            deadline = self._jobs[0].queued_at + self.max_wait
            while self._queued < self.max_batch and self._preparing > 0 and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs: list[_Job[P, R]] = []
            count = 0
            while self._jobs and (not jobs or count + len(self._jobs[0].items) <= self.max_batch):
                job = self._jobs.popleft()
                jobs.append(job)
                count += len(job.items)
            self._queued -= count
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            items: list[Any] = [item for job in jobs for item in job.items]
            started = time.perf_counter()
            try:
                results = list(self._infer(items))
                if len(results) != len(items):
                    raise RuntimeError(f"infer returned {len(results)} results for {len(items)} inputs")
            except BaseException as err:  # noqa: BLE001 - every caller must hear of it, and the thread must go on
                for job in jobs:
                    _settle(job.future, error=err)
                continue
            seconds = time.perf_counter() - started
            self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * seconds / len(items)
            if self._on_batch is not None:
                self._on_batch(len(items), seconds)
            start = 0
            for job in jobs:
                _settle(job.future, results[start:start + len(job.items)])
                start += len(job.items)


def _settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless its caller cancelled it meanwhile (a client that hung up)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass

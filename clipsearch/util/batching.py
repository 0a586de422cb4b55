"""Dynamic micro-batching: queries that arrive together share one forward pass or one search.

A single worker thread takes the first waiting item, then whatever else arrives within the wait
window (none by default: only what is already queued) up to the maximum batch, and processes them
in one call. A lone query is never held back by the default window; under load, the queries that
queue while a batch runs form the next batch, so throughput grows with concurrency while each
query still waits for at most one batch ahead of it.

Background items (writes to a live collection) wait in a lane of their own: a batch takes every
waiting query first and fills up with background items, and a batch of background items alone
holds at most `max_background`, so a query that arrives during a write storm waits for at most
one small batch of writes rather than a full one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")



class MicroBatcher(Generic[In, Out]):
    """Runs `process` (a list of n items → n results, in order) on batches of submitted items.

    `process` always runs in the batcher's own thread, so it may hold state that must not be used
    from two threads at once (a CUDA graph's static buffers). An exception in `process` is given
    to every item of that batch; items whose future was cancelled (the caller gave up waiting)
    are dropped before the batch runs.
    """

    def __init__(self, process: Callable[[list[In]], Sequence[Out]], max_batch: int = 64,
                 window_s: float = 0.0, name: str = "batch", max_background: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must not be negative, got {window_s}")
        self.process, self.max_batch, self.window_s, self.name = process, max_batch, window_s, name
        self.max_background = max(1, min(max_background, max_batch))
        self.batches = 0
        self.items = 0
        self._lanes: tuple[deque[tuple[In, Future[Out]]], deque[tuple[In, Future[Out]]]] = (deque(), deque())
        self._ready = threading.Condition()
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: In, background: bool = False) -> Future[Out]:
        """Queue `item`; a `background` one goes after every waiting query (see the module's docstring)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future[Out] = Future()
        with self._ready:
            self._lanes[background].append((item, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        """Finish every item submitted so far, then stop; later submissions are refused."""
        self._closed = True
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout=30)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            batch = [pair for pair in batch if pair[1].set_running_or_notify_cancel()]
            if batch:
                self._process(batch)

    def _collect(self) -> list[tuple[In, Future[Out]]] | None:
        """Wait for one item, then take more until the window closes or the batch is full: queries
        first, background items after them. None once closed and drained."""
        queries, background = self._lanes
        with self._ready:
            while not queries and not background:
                if self._stopping:
                    return None
                self._ready.wait()
            deadline = time.monotonic() + self.window_s
            while True:
                waiting = len(queries) + min(len(background), self.max_background)
                remaining = deadline - time.monotonic()
                if waiting >= self.max_batch or remaining <= 0 or self._stopping:
                    break
                self._ready.wait(remaining)
            batch = [queries.popleft() for _ in range(min(len(queries), self.max_batch))]
            # Background items fill the batch, but never past max_background of them: a query that
            # comes next waits for at most that many writes.
            room = min(self.max_batch - len(batch), self.max_background)
            batch.extend(background.popleft() for _ in range(min(len(background), room)))
            return batch

    def _process(self, batch: list[tuple[In, Future[Out]]]) -> None:
        try:
            results = self.process([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except BaseException as error:  # every waiting caller must hear of it, whatever it is
            log.exception("a batch of %d failed", len(batch))
            for _, future in batch:
                future.set_exception(error)
            return
        self.batches += 1
        self.items += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)



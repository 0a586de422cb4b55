"""Dynamic micro-batching: queries that arrive together share one forward pass or one search.

A single worker thread takes the first waiting item, then whatever else arrives within the wait
window (none by default: only what is already queued) up to the maximum batch, and processes them
in one call. A lone query is never held back by the default window; under load, the queries that
queue while a batch runs form the next batch, so throughput grows with concurrency while each
query still waits for at most one batch ahead of it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar, cast

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

_STOP = object()


class MicroBatcher(Generic[In, Out]):
    """Runs `process` (a list of n items → n results, in order) on batches of submitted items.

    `process` always runs in the batcher's own thread, so it may hold state that must not be used
    from two threads at once (a CUDA graph's static buffers). An exception in `process` is given
    to every item of that batch; items whose future was cancelled (the caller gave up waiting)
    are dropped before the batch runs.
    """

    def __init__(self, process: Callable[[list[In]], Sequence[Out]], max_batch: int = 64,
                 window_s: float = 0.0, name: str = "batch") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must not be negative, got {window_s}")
        self.process, self.max_batch, self.window_s, self.name = process, max_batch, window_s, name
        self.batches = 0
        self.items = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: In) -> Future[Out]:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future[Out] = Future()
        self._queue.put((item, future))
        return future

    def close(self) -> None:
        """Finish every item submitted so far, then stop; later submissions are refused."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            if batch:
                self._process(batch)
            if stop:
                self._cancel_waiting()
                return

    def _collect(self) -> tuple[list[tuple[In, Future[Out]]], bool]:
        """Block for one item, then take more until the window closes or the batch is full."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                return self._live(batch), True
            batch.append(entry)
        return self._live(batch), False

    @staticmethod
    def _live(entries: list[object]) -> list[tuple[In, Future[Out]]]:
        live: list[tuple[In, Future[Out]]] = []
        for entry in entries:
            pair = cast(tuple[In, Future[Out]], entry)  # only (item, future) pairs and _STOP are queued
            if pair[1].set_running_or_notify_cancel():
                live.append(pair)
        return live

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

    def _cancel_waiting(self) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not _STOP:
                entry[1].cancel()  # type: ignore[index]

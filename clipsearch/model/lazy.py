"""A model the server loads on its first request and runs in a batcher of its own (captions, answers).

The first request starts loading the model in a background thread and waits for it up to the
timeout; a request that finds it still loading (a large download) is answered ServiceBusy, to
retry. A load that failed is tried again by the next request: settings that can never work (a
missing extra, a model of the wrong kind) fail at once, before any download, and a network failure
may pass. Generation is slow (a forward pass per token), so each such model has its own thread and
queue: it never holds up the search model's batchers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from clipsearch.errors import ModelLoadError, ServiceBusy
from clipsearch.util.batching import MicroBatcher

Model = TypeVar("Model")
In = TypeVar("In")
Out = TypeVar("Out")


class LazyBatchedModel(Generic[Model, In, Out]):
    """`load()` on the first request, then `process(model)` (a batch of inputs → outputs) in a batcher.

    `what` names the model in messages ("the caption model coca_ViT-L-14"); `task` names the work
    ("captioning") in the message of a request that waited too long.
    """

    def __init__(self, load: Callable[[], Model], process: Callable[[Model], Callable[[list[In]], Sequence[Out]]],
                 *, what: str, task: str, name: str, max_batch: int = 8, timeout_s: float = 120.0) -> None:
        self._load_model, self._process = load, process
        self.what, self.task, self.name = what, task, name
        self.max_batch, self.timeout_s = max_batch, timeout_s
        self._model: Model | None = None
        self._batcher: MicroBatcher[In, Out] | None = None
        self._loading: threading.Thread | None = None
        self._failure: ModelLoadError | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> Model | None:
        return self._model

    @property
    def mean_batch(self) -> float:
        """Inputs per batch so far (0 before the first)."""
        return self._batcher.mean_batch if self._batcher is not None else 0.0

    def model(self) -> Model:
        """The loaded model, loading it first if this is the first request."""
        with self._lock:
            if self._model is None and (self._loading is None or not self._loading.is_alive()):
                self._failure = None
                self._loading = threading.Thread(target=self._load, name=f"load-{self.name}", daemon=True)
                self._loading.start()
            loading = self._loading
        if loading is not None:
            loading.join(timeout=self.timeout_s)
        if self._failure is not None:
            raise self._failure
        if self._model is None:
            raise ServiceBusy(f"{self.what} is still loading; try again shortly")
        return self._model

    def _load(self) -> None:
        try:
            model = self._load_model()
        except ModelLoadError as error:
            self._failure = error
            return
        self._batcher = MicroBatcher(self._process(model), self.max_batch, name=self.name)
        self._model = model

    def run(self, inputs: Sequence[In]) -> list[Out]:
        """Each input's output, in order, once the model is loaded; inputs from concurrent requests
        share batches."""
        self.model()
        assert self._batcher is not None
        futures = [self._batcher.submit(item) for item in inputs]
        try:
            return [future.result(timeout=self.timeout_s) for future in futures]
        except FutureTimeout:
            for future in futures:
                future.cancel()
            raise ServiceBusy(f"{self.task} did not finish within {self.timeout_s:g} s; try again later") from None

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

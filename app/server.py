"""What one server process holds: its collections (app.state), the models and memory they share
(app.resources), the caption and question models, and the metrics.

With CLIPSEARCH_DATA_DIR, every worker follows the folder: a collection made or dropped through
another worker, or by `indexer build --collection`, is loaded or closed within `reload_poll_s`.
"""

from __future__ import annotations

import logging
import threading

from app.metrics import Metrics
from app.resources import MB, MemoryLedger, Models
from app.settings import Settings
from app.state import LOADING, RETIRE_GRACE_S, CollectionState
from clipsearch.config import ModelRef
from clipsearch.errors import CollectionConflict, CollectionNotFound, InvalidQuery, ModelLoadError
from clipsearch.model.captions import CaptionService
from clipsearch.model.vqa import AskService
from clipsearch.store.catalog import DEFAULT_COLLECTION, Catalog
from clipsearch.store.manifest import read_manifest

log = logging.getLogger(__name__)


class ServerState:
    """Loads every collection once, off the event loop (the default first), and keeps the set in step
    with the data folder."""

    def __init__(self, settings: Settings, writes_enabled: bool = False) -> None:
        self.settings, self.writes_enabled = settings, writes_enabled
        self.catalog = Catalog(settings.bundle_path, settings.data_dir)
        self.models = Models(settings)
        budget = None if settings.memory_budget_mb is None else int(settings.memory_budget_mb * MB)
        self.ledger = MemoryLedger(budget, self.models.weight_bytes)
        self.metrics = Metrics(self._batch_counts, self._refused_writes)
        self.captions = CaptionService(settings.captions, max_batch=min(settings.max_batch, 8),
                                       timeout_s=settings.caption_timeout_s)
        """Loads its own model on the first /caption request."""
        self.answers = AskService(settings.vqa, max_batch=min(settings.max_batch, 8), timeout_s=settings.vqa_timeout_s)
        """Loads its own model on the first question (/ask, or a search's `ask`)."""
        self._collections: dict[str, CollectionState] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.started = False
        """The collections there at start-up have all been loaded, or failed to."""

    def start_loading(self) -> None:
        """Load in a daemon thread: the server answers /health and /ready (503) meanwhile, and a
        shutdown never has to wait for a model that is still loading."""
        threading.Thread(target=self._load_all, name="load", daemon=True).start()

    def _load_all(self) -> None:
        try:
            for name in self.catalog.names():
                self._state_of(name)
            for state in self.collections():
                state.load()
            self.models.drop_unused(self._models_in_use())  # those of collections that could not be served
        finally:
            self.started = True
        if self.problem is None:
            log.info("clipsearch is ready: open %s", self.settings.page_url)
        if not self.catalog.fixed:
            threading.Thread(target=self._follow_catalog, name="catalog-watch", daemon=True).start()

    def _state_of(self, name: str) -> CollectionState:
        with self._lock:
            state = self._collections.get(name)
            if state is None:
                state = CollectionState(name, self.catalog.path(name), self.settings, self.models, self.metrics,
                                        self.ledger, self.writes_enabled, self._release_unused_models)
                self._collections[name] = state
            return state

    def _follow_catalog(self) -> None:
        while not self._closed.wait(self.settings.reload_poll_s):
            try:
                self.sync_with_catalog()
            except Exception:  # the watch must outlive any one failure; the next poll tries again
                log.exception("following %s failed", self.settings.data_dir)

    def sync_with_catalog(self) -> None:
        """Load the collections made in the data folder since the last look, and close those dropped."""
        on_disk = set(self.catalog.names())
        with self._lock:
            new = [name for name in on_disk if name not in self._collections]
            gone = [name for name in self._collections if name not in on_disk]
        for name in gone:
            self._close(name)
        for name in new:
            log.info("collection %r appeared in %s: loading it", name, self.settings.data_dir)
            self._state_of(name).load()

    def collections(self) -> list[CollectionState]:
        """The collections served, the default first, then by name."""
        with self._lock:
            return sorted(self._collections.values(), key=lambda state: (state.name != DEFAULT_COLLECTION,
                                                                         state.name))

    def collection(self, name: str) -> CollectionState:
        with self._lock:
            state = self._collections.get(name)
        if state is None:
            if self.catalog.fixed:
                self.catalog.path(name)  # 404 saying that a server of one bundle serves `default` only
            served = ", ".join(self.names()) or "none yet"
            raise CollectionNotFound(f"no collection named {name!r} (this server serves: {served})", "collection")
        return state

    def names(self) -> list[str]:
        return [state.name for state in self.collections()]

    @property
    def problem(self) -> str | None:
        """Why the server is not ready: still loading, or the default collection cannot be served."""
        if not self.started:
            return LOADING
        with self._lock:
            default = self._collections.get(DEFAULT_COLLECTION)
        return None if default is None else default.problem

    def create(self, name: str, model: ModelRef | None) -> tuple[bool, CollectionState]:
        """Make collection `name`, empty, for `model` (default: the default collection's), and serve it;
        whether it was made (False: it was there, with `model` if one is named; CollectionConflict with
        another)."""
        self.catalog.changeable_path(name)  # a server of one bundle makes none (409), a bad name is refused (422)
        wanted = model or self._default_model()
        if name not in self.names() and name not in self.catalog.names():
            try:
                encoder = self.models.get(wanted)
            except ModelLoadError as error:
                raise InvalidQuery("model", f"{wanted.describe()} cannot be loaded: {error.reason}") from None
            try:
                self.catalog.create(name, encoder.ref, encoder.embedding_dim)
                created = True
            except CollectionConflict:
                created = False  # made meanwhile, by another worker or the indexer
        else:
            created = False
        state = self._state_of(name)
        if state.loading:
            state.load()
        if not created and model is not None:
            served = state.encoder.ref if state.encoder is not None else read_manifest(state.path).model
            if served != model:
                raise CollectionConflict(f"a collection named {name!r} exists already, with the model "
                                         f"{served.describe()}", "collection")
        return created, state

    def _default_model(self) -> ModelRef:
        with self._lock:
            default = self._collections.get(DEFAULT_COLLECTION)
        if default is None or default.encoder is None:
            raise InvalidQuery("model", "there is no default collection being served to take the model from: "
                                        "name one")
        return default.encoder.ref

    def drop(self, name: str) -> None:
        """Delete collection `name` on disk, then stop serving it (requests in flight finish first)."""
        self.collection(name)  # 404 for one not served
        self.catalog.drop(name, self.settings.write_lock_timeout_s)
        self._close(name)

    def _close(self, name: str) -> None:
        with self._lock:
            state = self._collections.pop(name, None)
        if state is not None:
            state.close(grace_s=self.settings.encode_timeout_s + RETIRE_GRACE_S)
            self.models.drop_unused(self._models_in_use())
            log.info("collection %r is no longer served", name)

    def _release_unused_models(self) -> None:
        # A service being retired keeps its own reference to its encoder until it is closed.
        self.models.drop_unused(self._models_in_use())

    def _models_in_use(self) -> set[ModelRef]:
        return {state.encoder.ref for state in self.collections() if state.encoder is not None}

    def _batch_counts(self) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for state in self.collections():
            if state.service is not None:
                for stage, (batches, queries) in state.service.pipeline.batch_counts().items():
                    before = counts.get(stage, (0, 0))
                    counts[stage] = (before[0] + batches, before[1] + queries)
        return counts

    def _refused_writes(self) -> dict[str, tuple[str | None, int | None]]:
        return {state.name: state.refused_writes() for state in self.collections()}

    def close(self) -> None:
        self._closed.set()
        for state in self.collections():
            state.close()
        self.captions.close()
        self.answers.close()

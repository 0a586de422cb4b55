"""What the server holds of one collection once started: its search service, or the reason it has none.

The bundle can be replaced under a running server: by a compaction (clipsearch.store.compaction, run
here in the background or by `indexer compact`), a rebuild, or a reindex with another model. Each
worker checks the manifest's file every `reload_poll_s`; when it is another one, the worker loads
the new bundle (and its model, if it is another, once per server: app.resources), swaps its search
service for the new one, and closes the old one once the requests that took it have had time to
finish. Until then it serves its last snapshot of the old bundle, which
is consistent but misses what was written since the swap: that is the staleness bound during a
swap (poll interval plus load time; docs/collections.md). A write that reaches the old log is
refused by it (BundleReplaced) and runs again on the new bundle.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from app.errors import ServiceNotReady, WritesUnavailable
from app.metrics import Metrics
from app.refusals import WriteRefusal, WritesStatus, refusal_after
from app.resources import MemoryLedger, Models
from app.settings import Settings
from clipsearch.errors import BundleReplaced, CannotCompact, ClipSearchError, StorageError
from clipsearch.index import faiss_index
from clipsearch.index.sharding import parse_devices
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import close_service, open_service
from clipsearch.search.service import SearchService
from clipsearch.search.writes import UNCHANGED, CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.bundle import resident_bytes
from clipsearch.store.compaction import compact
from clipsearch.store.filters import Filter
from clipsearch.store.items import Item
from clipsearch.store.manifest import MANIFEST_FILE, read_manifest
from clipsearch.util.storage import disk_space

log = logging.getLogger(__name__)

Result = TypeVar("Result")
COMPACTION_RETRY_S = 60.0
"""How long a background compaction that met a full or read-only disk waits before it tries again."""
LOADING = "loading the model and the bundle"
"""The problem of a collection not loaded yet."""
RETIRE_GRACE_S = 5.0
"""A replaced service is closed this long after the longest a request may wait on it."""


class CollectionState:
    """One collection: loads its bundle once (the model through the server's shared Models), off the
    event loop, follows it on disk, and runs its writes; /ready and /collections report how that went."""

    def __init__(self, name: str, path: Path, settings: Settings, models: Models, metrics: Metrics,
                 ledger: MemoryLedger, writes_enabled: bool = False,
                 model_changed: Callable[[], None] | None = None) -> None:
        self.name, self.path, self.settings = name, path, settings
        self.model_changed = model_changed
        """Called once this collection serves another model (reindexed): the server lets go of unused ones."""
        self.models, self.metrics, self.ledger = models, metrics, ledger
        self.writes_enabled = writes_enabled
        """A write may be let through at all: an admin key or a keys file is set (app.access)."""
        self.service: SearchService | None = None
        self.problem: str | None = LOADING
        self.writer: CollectionWriter | None = None
        self.refusal: WriteRefusal | None = WriteRefusal("not_loaded", "the bundle is not loaded yet")
        """Why writes are refused now: the bundle cannot take them, or the last one was refused."""
        self.encoder: ClipEncoder | None = None
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._closed = threading.Event()
        self._loaded_manifest: tuple[int, int] | None = None
        """Which manifest file (device, inode) the service was loaded from."""
        self._failed_manifest: tuple[int, int] | None = None
        self._compacting: threading.Thread | None = None
        self._auto_compact = settings.auto_compact
        self._compact_after = 0.0
        """A compaction that met a full or read-only disk holds the next one off until then (monotonic s)."""

    @property
    def loading(self) -> bool:
        return self.service is None and self.problem == LOADING

    def load(self) -> None:
        """Load the bundle and its model (once per server: app.resources), within the memory budget;
        a failure leaves the reason in `problem`, for /ready and this collection's routes. Once only:
        a second call (a PUT while the server still loads it) waits for the first."""
        with self._load_lock:
            if self.loading:
                self._load()

    def _load(self) -> None:
        try:
            manifest = read_manifest(self.path)  # fail fast, before loading a model
            encoder = self.models.get(manifest.model)
            self.ledger.reserve(self.name, resident_bytes(manifest))
            self.encoder = encoder
            identity = _file_identity(self.path / MANIFEST_FILE)
            service, writer = self._open_service(encoder, self.settings.verify_checksums)
            with self._lock:
                if self._closed.is_set():  # the server stopped (or the collection was dropped) while loading
                    close_service(service)
                    self.ledger.release(self.name)
                    return
                self.service, self.writer, self.problem = service, writer, None
                if writer is not None:
                    self.refusal = None
                self._loaded_manifest = identity
            log.info("ready: collection %r, %s over %s", self.name, encoder.ref.describe(), self.path)
            threading.Thread(target=self._watch, name=f"bundle-watch-{self.name}", daemon=True).start()
        except ClipSearchError as error:
            self.ledger.release(self.name)
            self.problem = f"bundle {self.path} cannot be served: {error}"
            log.error("%s", self.problem)
        except Exception as error:  # anything else still must leave a server that says why it is not ready
            self.ledger.release(self.name)
            self.problem = f"loading failed: {type(error).__name__}: {error}"
            log.exception("loading %s failed", self.path)

    def _open_service(self, encoder: ClipEncoder, verify_checksums: bool) -> tuple[SearchService,
                                                                                   CollectionWriter | None]:
        settings = self.settings
        service = open_service(encoder, self.path, verify_checksums=verify_checksums,
                               on_read_only=self._serve_read_only, lock_timeout_s=settings.write_lock_timeout_s,
                               audio_models=self.models.audio,
                               limits=settings.limits,
                               use_gpu=self._use_gpu(encoder), batching=settings.batching,
                               filter_cache_size=settings.filter_cache_size, rrf_k=settings.rrf_k,
                               devices=parse_devices(settings.devices, encoder.device))
        live = service.collection.live
        writer = CollectionWriter(service, settings.write_limits, settings.video_bounds, settings.audio_bounds) \
            if live is not None and live.writable else None
        service.warm_up()
        return service, writer

    @staticmethod
    def _use_gpu(encoder: ClipEncoder) -> bool:
        return encoder.device.type == "cuda" and faiss_index.gpu_available()

    def _watch(self) -> None:
        """Follow the bundle: load it again when replaced, and start a compaction when one is due
        (writes through other workers and `indexer sync` count too)."""
        while not self._closed.wait(self.settings.reload_poll_s):
            try:
                self.reload_if_replaced()
                self.open_for_writes_if_writable()
                self.compact_if_due()
            except Exception:  # the watch must outlive any one failure; the next poll tries again
                log.exception("watching %s failed", self.path)

    def reload_if_replaced(self) -> bool:
        """If the bundle on disk is no longer the one served, serve the new one; whether it did.

        A new manifest over the same files (an evaluation record added) is taken as it is. A bundle
        of another model (`indexer reindex`) is served with that model, loaded first (once per
        server) while the old bundle still answers. A bundle that cannot be served leaves the old one
        served, read-only, and is reported once.
        """
        with self._reload_lock:
            identity = _file_identity(self.path / MANIFEST_FILE)
            service, encoder = self.service, self.encoder
            if identity is None or identity in (self._loaded_manifest, self._failed_manifest) \
                    or service is None or encoder is None:
                return False
            try:
                manifest = read_manifest(self.path)
                if manifest.files == service.bundle.manifest.files:
                    service.bundle.manifest = manifest
                    self._loaded_manifest = identity
                    return False
                started = time.perf_counter()
                if manifest.model != encoder.ref:
                    encoder = self.models.get(manifest.model)
                # The files were written (and hashed) by the compaction or build that just finished:
                # their sizes are checked, not their hashes again.
                new_service, writer = self._open_service(encoder, verify_checksums=False)
            except (OSError, sqlite3.Error) as error:  # replaced again while being read, say: the next poll retries
                log.warning("%s: the new bundle could not be loaded yet: %s", self.path, error)
                return False
            except ClipSearchError as error:
                self._failed_manifest = identity
                self.writer = None
                self.refusal = WriteRefusal("bundle_replaced", f"the bundle was replaced by one that cannot be "
                                                               f"served ({error}); restart the server")
                log.error("%s: still serving the bundle loaded before: %s", self.path, error)
                return False
            if not self._swap_in(new_service, writer, identity):
                return False
            changed, self.encoder = encoder is not self.encoder, encoder
            self.ledger.update(self.name, resident_bytes(manifest))
            log.info("loaded the new bundle at %s (%s) in %.2f s", self.path, encoder.ref.describe(),
                     time.perf_counter() - started)
        if changed and self.model_changed is not None:
            self.model_changed()
        return True

    def _swap_in(self, new_service: SearchService, writer: CollectionWriter | None,
                 identity: tuple[int, int] | None) -> bool:
        """Serve `new_service` from now on, and close the one it replaces once its requests are done."""
        with self._lock:
            if self._closed.is_set():
                close_service(new_service)
                return False
            old, self.service, self.writer = self.service, new_service, writer
            self._loaded_manifest = identity
            if writer is not None and self.refusal is not None and self.refusal.kind in ("unwritable", "not_loaded"):
                self.refusal = None
        if old is not None:
            retire = threading.Timer(self.settings.encode_timeout_s + RETIRE_GRACE_S, close_service, (old,))
            retire.daemon = True
            retire.start()
        return True

    def open_for_writes_if_writable(self) -> bool:
        """A bundle served read-only because its directory could not be written: once it can be
        (remounted read-write, say), open it again with its live log; whether writes go through now."""
        encoder, refusal = self.encoder, self.refusal
        if self.service is None or encoder is None or self.writer is not None or refusal is None \
                or refusal.kind != "unwritable" or not _writable(self.path):
            return False
        with self._reload_lock:
            identity = _file_identity(self.path / MANIFEST_FILE)
            try:
                new_service, writer = self._open_service(encoder, verify_checksums=False)
            except (OSError, sqlite3.Error, ClipSearchError) as error:
                log.warning("%s is still not writable: %s", self.path, error)
                return False
            if writer is None:
                close_service(new_service)
                return False
            if not self._swap_in(new_service, writer, identity):
                return False
        log.info("%s can be written again: writes are accepted", self.path)
        return True

    def write(self, operation: Callable[[CollectionWriter], Result]) -> Result:
        """Run one write. A write that finds the bundle replaced under it (compacted or rebuilt)
        runs again on the new bundle once loaded; nothing of the first try was committed. A write
        the filesystem refuses (StorageError) is noted, for /info and the metrics, until one goes
        through."""
        try:
            try:
                result = operation(self.require_writer())
            except BundleReplaced:
                if not self.reload_if_replaced() and self.writer is None:
                    raise
                result = operation(self.require_writer())
        except StorageError as error:
            self._refused(error)
            raise
        if self.refusal is not None and self.refusal.by_the_filesystem:
            log.info("writes to %s go through again (refused %d times since %s: %s)", self.path,
                     self.refusal.count, self.refusal.since, self.refusal.kind)
            self.refusal = None
        self.compact_if_due()
        return result

    def _refused(self, error: StorageError) -> None:
        self.refusal = refusal_after(self.refusal, error)
        self.metrics.write_refusals.labels(self.name, self.refusal.kind).inc()

    def refused_writes(self) -> tuple[str | None, int | None]:
        """For the metrics: why writes are refused now (None: they are not), and the bytes free."""
        status = self.writes_status()
        return (None if status.refusal is None else status.refusal.kind,
                None if status.space is None else status.space.free_bytes)

    def writes_status(self) -> WritesStatus:
        """Whether writes go through now, why not, and the room left where the bundle is."""
        return WritesStatus(enabled=self.writes_enabled, refusal=self.refusal,
                            space=disk_space(self.path))

    def compact_if_due(self) -> None:
        """Start a background compaction if the live changes this worker sees make one due."""
        service = self.service
        if not self._auto_compact or service is None or self.writer is None or \
                (self._compacting is not None and self._compacting.is_alive()) or \
                time.monotonic() < self._compact_after:
            return
        changes = service.collection.refresh().changes
        base = sum(service.collection.base_count(modality) for modality in service.bundle.indices)
        if self.settings.compaction.due(changes, base):
            self._compacting = threading.Thread(target=self._compact, name="compact", daemon=True)
            self._compacting.start()

    def _compact(self) -> None:
        """One background compaction (skipped when another worker runs one), then the new bundle loaded."""
        encoder = self.encoder
        try:
            summary = compact(self.path, self.settings.compaction,
                              use_gpu=encoder is not None and self._use_gpu(encoder), wait=False, only_if_due=True)
        except CannotCompact as error:
            self._auto_compact = False
            log.error("background compaction is off for %s: %s", self.path, error)
            return
        except StorageError as error:
            # A full or read-only disk: trying again at every poll would build the new base again
            # and again, for nothing, until there is room.
            self._compact_after = time.monotonic() + COMPACTION_RETRY_S
            log.error("background compaction of %s stopped, nothing changed; retrying in %.0f s at the earliest: %s",
                      self.path, COMPACTION_RETRY_S, error)
            return
        except ClipSearchError as error:
            log.error("background compaction of %s failed: %s", self.path, error)
            return
        if summary is not None and summary.folded:
            log.info("worker %d compacted %s: %s", os.getpid(), self.path, summary.describe())
            self.reload_if_replaced()

    def require(self) -> SearchService:
        if self.service is None:
            raise ServiceNotReady(f"not ready: {self.problem}")
        return self.service

    def require_writer(self) -> CollectionWriter:
        self.require()
        if self.writer is None:
            reason = self.refusal.reason if self.refusal is not None else "it has no live log"
            raise WritesUnavailable(f"this bundle cannot take writes: {reason}")
        return self.writer

    def _serve_read_only(self, problem: str) -> None:
        """A bundle whose directory is read-only is served as built, and writes answer 503 saying why."""
        self.refusal = WriteRefusal("unwritable", problem)
        log.warning("serving %s read-only: %s", self.path, problem)

    def close(self, grace_s: float = 0.0) -> None:
        """Stop following the bundle and close the service, at once or after `grace_s` (a dropped
        collection's requests in flight finish first)."""
        with self._lock:
            self._closed.set()
            service, self.service, self.writer = self.service, None, None
            self.problem = "the collection was closed"
        self.ledger.release(self.name)
        if service is None:
            return
        if grace_s <= 0:
            close_service(service)
        else:
            retire = threading.Timer(grace_s, close_service, (service,))
            retire.daemon = True
            retire.start()

    def memory_bytes(self) -> int:
        """What its indices hold in memory now: the base's index files and the live vectors."""
        service = self.service
        if service is None:
            return 0
        return resident_bytes(service.bundle.manifest) + service.collection.refresh().vector_bytes


def _writable(bundle: os.PathLike[str]) -> bool:
    space = disk_space(Path(bundle))
    return os.access(bundle, os.W_OK) and space is not None and not space.read_only


def _file_identity(path: os.PathLike[str]) -> tuple[int, int] | None:
    """Which file is at `path` (device and inode): a bundle swapped in has a new manifest file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


class Writes:
    """The writes the HTTP routes make, each through CollectionState.write (run again on a bundle
    swapped in under it, and followed by a background compaction when one is due)."""

    def __init__(self, state: CollectionState, writer: CollectionWriter) -> None:
        self.state, self.limits = state, writer.limits

    def add_texts(self, entries: Sequence[TextEntry], field: str = "items") -> list[int]:
        return self.state.write(lambda writer: writer.add_texts(entries, field))

    def add_images(self, entries: Sequence[ImageEntry], field: str = "files") -> list[int]:
        return self.state.write(lambda writer: writer.add_images(entries, field))

    def update(self, item_id: int, *, caption: Any = UNCHANGED, text: Any = UNCHANGED,
               metadata: Any = UNCHANGED) -> Item:
        return self.state.write(lambda writer: writer.update(item_id, caption=caption, text=text, metadata=metadata))

    def delete(self, item_ids: Sequence[int], field: str = "ids") -> list[int]:
        return self.state.write(lambda writer: writer.delete(item_ids, field))

    def delete_matching(self, filter: Filter) -> list[int]:
        return self.state.write(lambda writer: writer.delete_matching(filter))

    def item(self, item_id: int, field: str = "id") -> Item:
        return self.state.require().collection.item(item_id, field)

"""What the server holds once started: the search service, or the reason it has none.

The bundle can be replaced under a running server: by a compaction (clipsearch.store.compaction, run
here in the background or by `indexer compact`) or a rebuild. Each worker checks the manifest's
file every `reload_poll_s`; when it is another one, the worker loads the new bundle with the model
it has, swaps its search service for the new one, and closes the old one once the requests that
took it have had time to finish. Until then it serves its last snapshot of the old bundle, which
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
from typing import Any, TypeVar

from app.errors import ServiceNotReady, WritesUnavailable
from app.metrics import Metrics
from app.settings import Settings
from clipsearch.errors import BundleReplaced, CannotCompact, CheckpointRequired, ClipSearchError
from clipsearch.index import faiss_index
from clipsearch.index.sharding import parse_devices
from clipsearch.model.captions import CaptionService
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.search.open import close_service, open_service
from clipsearch.search.service import SearchService
from clipsearch.search.writes import UNCHANGED, CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.compaction import compact
from clipsearch.store.filters import Filter
from clipsearch.store.items import Item
from clipsearch.store.manifest import MANIFEST_FILE, read_manifest

log = logging.getLogger(__name__)

Result = TypeVar("Result")
RETIRE_GRACE_S = 5.0
"""A replaced service is closed this long after the longest a request may wait on it."""


class ServiceState:
    """Loads the model and the bundle once, off the event loop; /ready reports how that went."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: SearchService | None = None
        self.metrics = Metrics(lambda: self.service.pipeline.batch_counts() if self.service is not None else {})
        self.problem: str | None = "loading the model and the bundle"
        self.captions = CaptionService(settings.captions, max_batch=min(settings.max_batch, 8),
                                       timeout_s=settings.caption_timeout_s)
        """Loads its own model on the first /caption request."""
        self.writer: CollectionWriter | None = None
        self.writes_problem = "not loaded yet"
        self.encoder: ClipEncoder | None = None
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._closed = threading.Event()
        self._loaded_manifest: tuple[int, int] | None = None
        """Which manifest file (device, inode) the service was loaded from."""
        self._failed_manifest: tuple[int, int] | None = None
        self._compacting: threading.Thread | None = None
        self._auto_compact = settings.auto_compact

    def start_loading(self) -> None:
        """Load in a daemon thread: the server answers /health and /ready (503) meanwhile, and a
        shutdown never has to wait for a model that is still loading."""
        threading.Thread(target=self.load, name="load", daemon=True).start()

    def load(self) -> None:
        settings = self.settings
        try:
            manifest = read_manifest(settings.bundle_path)  # fail fast, before loading a model
            if manifest.model.checkpoint_sha256 and settings.checkpoint is None:
                raise CheckpointRequired("the bundle was built from a checkpoint file; set CLIPSEARCH_CHECKPOINT "
                                         "to that file's path")
            encoder = load_encoder(manifest.model.name, manifest.model.pretrained,
                                   settings.checkpoint if manifest.model.checkpoint_sha256 else None,
                                   settings.device, backend=settings.backend, onnx_cache=settings.onnx_cache,
                                   threads=settings.intra_op_threads, text_trim=settings.text_trim,
                                   text_language=settings.text_language)
            if settings.cuda_graphs:
                encoder.enable_cuda_graphs(settings.max_batch)
            self.encoder = encoder
            identity = _file_identity(settings.bundle_path / MANIFEST_FILE)
            service, writer = self._open_service(encoder, settings.verify_checksums)
            with self._lock:
                if self._closed.is_set():  # the server stopped while this was loading
                    close_service(service)
                    return
                self.service, self.writer, self.problem = service, writer, None
                self._loaded_manifest = identity
            log.info("ready: %s over %s", encoder.ref.describe(), settings.bundle_path)
            log.info("clipsearch is ready: open %s", settings.page_url)
            threading.Thread(target=self._watch, name="bundle-watch", daemon=True).start()
        except ClipSearchError as error:
            self.problem = f"bundle {settings.bundle_path} cannot be served: {error}"
            log.error("%s", self.problem)
        except Exception as error:  # anything else still must leave a server that says why it is not ready
            self.problem = f"loading failed: {type(error).__name__}: {error}"
            log.exception("loading failed")

    def _open_service(self, encoder: ClipEncoder, verify_checksums: bool) -> tuple[SearchService,
                                                                                   CollectionWriter | None]:
        settings = self.settings
        service = open_service(encoder, settings.bundle_path, verify_checksums=verify_checksums,
                               on_read_only=self._serve_read_only, limits=settings.limits,
                               use_gpu=self._use_gpu(encoder), batching=settings.batching,
                               filter_cache_size=settings.filter_cache_size, rrf_k=settings.rrf_k,
                               devices=parse_devices(settings.devices, encoder.device))
        live = service.collection.live
        writer = CollectionWriter(service, settings.write_limits) if live is not None else None
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
                self.compact_if_due()
            except Exception:  # the watch must outlive any one failure; the next poll tries again
                log.exception("watching %s failed", self.settings.bundle_path)

    def reload_if_replaced(self) -> bool:
        """If the bundle on disk is no longer the one served, serve the new one; whether it did.

        A new manifest over the same files (an evaluation record added) is taken as it is. A bundle
        that cannot be served (another model, say) leaves the old one served, read-only, and is
        reported once.
        """
        with self._reload_lock:
            identity = _file_identity(self.settings.bundle_path / MANIFEST_FILE)
            service, encoder = self.service, self.encoder
            if identity is None or identity in (self._loaded_manifest, self._failed_manifest) \
                    or service is None or encoder is None:
                return False
            try:
                manifest = read_manifest(self.settings.bundle_path)
                if manifest.files == service.bundle.manifest.files:
                    service.bundle.manifest = manifest
                    self._loaded_manifest = identity
                    return False
                started = time.perf_counter()
                # The files were written (and hashed) by the compaction or build that just finished:
                # their sizes are checked, not their hashes again.
                new_service, writer = self._open_service(encoder, verify_checksums=False)
            except (OSError, sqlite3.Error) as error:  # replaced again while being read, say: the next poll retries
                log.warning("%s: the new bundle could not be loaded yet: %s", self.settings.bundle_path, error)
                return False
            except ClipSearchError as error:
                self._failed_manifest = identity
                self.writer, self.writes_problem = None, f"the bundle was replaced by one that cannot be served " \
                                                         f"({error}); restart the server"
                log.error("%s: still serving the bundle loaded before: %s", self.settings.bundle_path, error)
                return False
            with self._lock:
                if self._closed.is_set():
                    close_service(new_service)
                    return False
                old, self.service, self.writer = self.service, new_service, writer
                self._loaded_manifest = identity
            log.info("loaded the new bundle at %s in %.2f s", self.settings.bundle_path, time.perf_counter() - started)
            if old is not None:
                retire = threading.Timer(self.settings.encode_timeout_s + RETIRE_GRACE_S, close_service, (old,))
                retire.daemon = True
                retire.start()
            return True

    def write(self, operation: Callable[[CollectionWriter], Result]) -> Result:
        """Run one write. A write that finds the bundle replaced under it (compacted or rebuilt)
        runs again on the new bundle once loaded; nothing of the first try was committed."""
        try:
            result = operation(self.require_writer())
        except BundleReplaced:
            if not self.reload_if_replaced() and self.writer is None:
                raise
            result = operation(self.require_writer())
        self.compact_if_due()
        return result

    def compact_if_due(self) -> None:
        """Start a background compaction if the live changes this worker sees make one due."""
        service = self.service
        if not self._auto_compact or service is None or self.writer is None or \
                (self._compacting is not None and self._compacting.is_alive()):
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
            summary = compact(self.settings.bundle_path, self.settings.compaction,
                              use_gpu=encoder is not None and self._use_gpu(encoder), wait=False, only_if_due=True)
        except CannotCompact as error:
            self._auto_compact = False
            log.error("background compaction is off for %s: %s", self.settings.bundle_path, error)
            return
        except ClipSearchError as error:
            log.error("background compaction of %s failed: %s", self.settings.bundle_path, error)
            return
        if summary is not None and summary.folded:
            log.info("worker %d compacted %s: %s", os.getpid(), self.settings.bundle_path, summary.describe())
            self.reload_if_replaced()

    def require(self) -> SearchService:
        if self.service is None:
            raise ServiceNotReady(f"not ready: {self.problem}")
        return self.service

    def require_writer(self) -> CollectionWriter:
        self.require()
        if self.writer is None:
            raise WritesUnavailable(f"this bundle cannot take writes: {self.writes_problem}")
        return self.writer

    def _serve_read_only(self, problem: str) -> None:
        """A bundle whose directory is read-only is served as built, and writes answer 503 saying why."""
        self.writes_problem = problem
        log.warning("serving %s read-only: %s", self.settings.bundle_path, problem)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            service, self.service = self.service, None
        if service is not None:
            close_service(service)
        self.captions.close()


def _file_identity(path: os.PathLike[str]) -> tuple[int, int] | None:
    """Which file is at `path` (device and inode): a bundle swapped in has a new manifest file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


class Writes:
    """The writes the HTTP routes make, each through ServiceState.write (run again on a bundle
    swapped in under it, and followed by a background compaction when one is due)."""

    def __init__(self, state: ServiceState, writer: CollectionWriter) -> None:
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

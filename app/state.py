"""What the server holds once started: the search service, or the reason it has none."""

from __future__ import annotations

import logging
import sqlite3
import threading

from app.errors import ServiceNotReady, WritesUnavailable
from app.metrics import Metrics
from app.settings import Settings
from clipsearch import index as faiss_index
from clipsearch.bundle import Bundle, load_bundle
from clipsearch.captions import CaptionService
from clipsearch.encoder import load_encoder
from clipsearch.errors import CheckpointRequired, ClipSearchError
from clipsearch.live import LIVE_FILE, LiveLog
from clipsearch.manifest import check_model, read_manifest
from clipsearch.search import SearchService
from clipsearch.writes import CollectionWriter

log = logging.getLogger(__name__)


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
        self._lock = threading.Lock()
        self._closed = False

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
                                   threads=settings.intra_op_threads, text_trim=settings.text_trim)
            bundle = load_bundle(settings.bundle_path, verify_checksums=settings.verify_checksums)
            check_model(bundle.manifest, encoder.ref, encoder.embedding_dim)
            if settings.cuda_graphs:
                encoder.enable_cuda_graphs(settings.max_batch)
            use_gpu = encoder.device.type == "cuda" and faiss_index.gpu_available()
            live = self._open_live_log(bundle, encoder.embedding_dim)
            service = SearchService(encoder, bundle, settings.limits, use_gpu=use_gpu, batching=settings.batching,
                                    filter_cache_size=settings.filter_cache_size, live=live)
            self.writer = CollectionWriter(service, settings.write_limits) if live is not None else None
            service.warm_up()
            with self._lock:
                if self._closed:  # the server stopped while this was loading
                    _close(service)
                    return
                self.service, self.problem = service, None
            log.info("ready: %s over %s", encoder.ref.describe(), settings.bundle_path)
        except ClipSearchError as error:
            self.problem = f"bundle {settings.bundle_path} cannot be served: {error}"
            log.error("%s", self.problem)
        except Exception as error:  # anything else still must leave a server that says why it is not ready
            self.problem = f"loading failed: {type(error).__name__}: {error}"
            log.exception("loading failed")

    def require(self) -> SearchService:
        if self.service is None:
            raise ServiceNotReady(f"not ready: {self.problem}")
        return self.service

    def require_writer(self) -> CollectionWriter:
        self.require()
        if self.writer is None:
            raise WritesUnavailable(f"this bundle cannot take writes: {self.writes_problem}")
        return self.writer

    def _open_live_log(self, bundle: Bundle, dim: int) -> LiveLog | None:
        """The bundle's live log (created on first start), or None where its directory is read-only:
        such a bundle is served as built, and writes answer 503 saying why."""
        try:
            return LiveLog(bundle.path / LIVE_FILE, bundle.items, dim)
        except (OSError, sqlite3.Error) as error:
            self.writes_problem = f"its live log {bundle.path / LIVE_FILE} cannot be opened for writing ({error})"
            log.warning("serving %s read-only: %s", bundle.path, self.writes_problem)
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            service, self.service = self.service, None
        if service is not None:
            _close(service)
        self.captions.close()


def _close(service: SearchService) -> None:
    service.close()
    if service.collection.live is not None:
        service.collection.live.close()
    service.bundle.close()

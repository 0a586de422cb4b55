"""What the server holds once started: the search service, or the reason it has none."""

from __future__ import annotations

import logging
import threading

from app.errors import ServiceNotReady
from app.metrics import Metrics
from app.settings import Settings
from clipsearch import index as faiss_index
from clipsearch.bundle import check_model, load_bundle, read_manifest
from clipsearch.encoder import load_encoder
from clipsearch.errors import ClipSearchError
from clipsearch.search import Batching, QueryLimits, SearchService

log = logging.getLogger(__name__)


class ServiceState:
    """Loads the model and the bundle once, off the event loop; /ready reports how that went."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: SearchService | None = None
        self.metrics = Metrics(lambda: self.service.batch_counts() if self.service is not None else {})
        self.problem: str | None = "loading the model and the bundle"
        self._loaded = threading.Event()

    def load(self) -> None:
        settings = self.settings
        try:
            manifest = read_manifest(settings.bundle_path)  # fail fast, before loading a model
            if manifest.model.checkpoint_sha256 and settings.checkpoint is None:
                raise ClipSearchError("the bundle was built from a checkpoint file; set CLIPSEARCH_CHECKPOINT "
                                      "to that file's path")
            encoder = load_encoder(manifest.model.name, manifest.model.pretrained,
                                   settings.checkpoint if manifest.model.checkpoint_sha256 else None,
                                   settings.device)
            bundle = load_bundle(settings.bundle_path, verify_checksums=settings.verify_checksums)
            check_model(bundle.manifest, encoder.ref, encoder.embedding_dim)
            limits = QueryLimits(max_k=settings.max_k, max_terms=settings.max_query_terms,
                                 max_text_chars=settings.max_text_chars, max_pixels=settings.max_pixels,
                                 decode_timeout_s=settings.decode_timeout_s,
                                 encode_timeout_s=settings.encode_timeout_s)
            use_gpu = encoder.device.type == "cuda" and faiss_index.gpu_available()
            batching = Batching(max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000)
            if settings.cuda_graphs:
                encoder.enable_cuda_graphs(settings.max_batch)
            service = SearchService(encoder, bundle, limits, use_gpu=use_gpu, batching=batching)
            service.warm_up()
            self.service = service
            self.problem = None
            log.info("ready: %s over %s", encoder.ref.describe(), settings.bundle_path)
        except ClipSearchError as error:
            self.problem = f"bundle {settings.bundle_path} cannot be served: {error}"
            log.error("%s", self.problem)
        except Exception as error:  # anything else still must leave a server that says why it is not ready
            self.problem = f"loading failed: {type(error).__name__}: {error}"
            log.exception("loading failed")
        finally:
            self._loaded.set()

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def require(self) -> SearchService:
        if self.service is None:
            raise ServiceNotReady(f"not ready: {self.problem}")
        return self.service

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service.bundle.close()

"""What the collections of one server share: each distinct model, loaded once, and the memory budget
that every loaded collection is counted against."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from app.settings import Settings
from clipsearch.config import ModelRef
from clipsearch.errors import CheckpointRequired, CollectionOverBudget
from clipsearch.model.audio import AudioEncoder, load_audio_encoder
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder

log = logging.getLogger(__name__)
MB = 1024 * 1024


class Models:
    """The models the collections use, each loaded once (on first need) and shared by every collection
    of that model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: dict[ModelRef, ClipEncoder] = {}
        self._loading: dict[ModelRef, threading.Lock] = {}
        self._lock = threading.Lock()
        self._audio: dict[str, AudioEncoder] = {}
        self._audio_lock = threading.Lock()

    def audio(self, name: str) -> AudioEncoder:
        """The audio model `name` (a collection's manifest names it), loaded now if no collection has
        loaded it yet (ModelLoadError names the [audio] extra when it is missing)."""
        with self._audio_lock:  # rare and small beside the image models: one load at a time
            if name not in self._audio:
                self._audio[name] = load_audio_encoder(name, self.settings.device)
            return self._audio[name]

    def get(self, ref: ModelRef) -> ClipEncoder:
        """The encoder of `ref`, loaded now if no collection has loaded it yet (ModelLoadError,
        CheckpointRequired)."""
        with self._lock:
            if ref in self._loaded:
                return self._loaded[ref]
            loading = self._loading.setdefault(ref, threading.Lock())
        with loading:  # one load per model, while other models load (and others' requests run) beside it
            with self._lock:
                if ref in self._loaded:
                    return self._loaded[ref]
            encoder = self._load(ref)
            with self._lock:
                self._loaded[ref] = encoder
            return encoder

    def _load(self, ref: ModelRef) -> ClipEncoder:
        settings = self.settings
        if ref.checkpoint_sha256 and settings.checkpoint is None:
            raise CheckpointRequired("the bundle was built from a checkpoint file; set CLIPSEARCH_CHECKPOINT to that "
                                     "file's path")
        encoder = load_encoder(ref.name, ref.pretrained, settings.checkpoint if ref.checkpoint_sha256 else None,
                               settings.device, backend=settings.backend, onnx_cache=settings.onnx_cache,
                               threads=settings.intra_op_threads, text_trim=settings.text_trim,
                               text_language=settings.text_language, int8_calibration=settings.int8_calibration)
        if settings.cuda_graphs:
            encoder.enable_cuda_graphs(settings.max_batch)
        if not settings.keep_torch_weights:
            encoder.release_model()  # where ONNX Runtime runs the towers: the weights held once, not twice
        log.info("loaded the model %s (%.0f MB of weights)", encoder.ref.describe(), encoder.weight_bytes / MB)
        return encoder

    def loaded(self) -> dict[ModelRef, ClipEncoder]:
        with self._lock:
            return dict(self._loaded)

    def weight_bytes(self) -> int:
        return sum(encoder.weight_bytes for encoder in self.loaded().values())

    def drop_unused(self, in_use: Iterable[ModelRef]) -> None:
        """Let go of the models no collection serves any longer (its last collection was dropped, or
        moved to another model)."""
        keep = set(in_use)
        with self._lock:
            for ref in [ref for ref in self._loaded if ref not in keep]:
                log.info("released the model %s: no collection uses it", ref.describe())
                del self._loaded[ref]


class MemoryLedger:
    """The memory each loaded collection's indices hold, against the server's budget (with the models'
    weights): a collection that would pass it is refused at load, with the figures, rather than let the
    operating system kill the server later."""

    def __init__(self, budget_bytes: int | None, model_bytes: Callable[[], int]) -> None:
        self.budget_bytes, self.model_bytes = budget_bytes, model_bytes
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, collection: str, needed: int) -> None:
        """Count `needed` bytes for `collection`, or CollectionOverBudget if that would pass the budget."""
        with self._lock:
            others = {name: held for name, held in self._held.items() if name != collection}
            if self.budget_bytes is not None:
                models = self.model_bytes()
                total = models + sum(others.values()) + needed
                if total > self.budget_bytes:
                    held = ", ".join(f"{name} {size / MB:.1f} MB" for name, size in sorted(others.items())) or "none"
                    raise CollectionOverBudget(
                        f"its indices need {needed / MB:.1f} MB, and the server holds {models / MB:.1f} MB of models "
                        f"and {sum(others.values()) / MB:.1f} MB of other collections ({held}): "
                        f"{total / MB:.1f} MB in all, over the budget of {self.budget_bytes / MB:.1f} MB "
                        "(CLIPSEARCH_MEMORY_BUDGET_MB)", "collection")
            self._held[collection] = needed

    def update(self, collection: str, held: int) -> None:
        """A collection already served holds `held` bytes now (its bundle was compacted or reindexed):
        counted, never refused, since refusing would take away a collection that is being served."""
        with self._lock:
            self._held[collection] = held

    def release(self, collection: str) -> None:
        with self._lock:
            self._held.pop(collection, None)

    def held(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

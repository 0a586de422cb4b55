"""BuildConfig: everything that decides a bundle's content, plus how fast it is made. No torch, no FAISS.

Its own module, so the build, the Ray engine and the fingerprints can all read it without importing
each other (clipsearch.ingest.build imports the other two).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.config import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    AudioSampling,
    CaptionConfig,
    OcrConfig,
    VideoSampling,
)
from clipsearch.index.fusion import Fusion
from clipsearch.index.spec import DEFAULT_FLAT_THRESHOLD, DEFAULT_ON_DISK_THRESHOLD, DEFAULT_RERANK
from clipsearch.ingest.sources import Columns


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a bundle's content, plus how fast it is made (workers, device).

    The indexer's command line takes its defaults from here.
    """

    out: Path
    images: Path | None = None
    texts: Path | None = None
    videos: Path | None = None
    """A folder of videos (or one file), recognised by content; each a segmented item (clipsearch.util.video)."""
    video: VideoSampling = field(default_factory=VideoSampling)
    audio: Path | None = None
    """A folder of sound files (or one file), recognised by content; each an item of windows embedded by
    the audio model (clipsearch.util.audio, clipsearch.model.audio)."""
    sound: AudioSampling = field(default_factory=AudioSampling)
    """How sounds are cut and read, and whether the videos' sound tracks are indexed as sounds too (`video_sound`)."""
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    checkpoint: Path | None = None
    text_language: str | None = None
    """The language code a tokenizer that takes one is told (NLLB's), for the texts indexed."""
    device: str | None = "auto"
    backend: str = "auto"
    """clipsearch.model.onnx_backend.BACKENDS: ONNX Runtime on a CPU where the [onnx] extra is installed."""
    onnx_cache: Path | None = None
    """Where ONNX exports are cached (default: onnx_backend.default_cache_dir())."""
    int8_calibration: Path | None = None
    """The folder the int8 backends are calibrated on (clipsearch.model.int8); None: `images` when
    that is a folder."""
    batch_size: int = 256
    workers: int = min(8, os.cpu_count() or 1)
    index_factory: str | None = None
    flat_threshold: int = DEFAULT_FLAT_THRESHOLD
    on_disk_threshold: int = DEFAULT_ON_DISK_THRESHOLD
    """Past this many vectors, with no index_factory, the index is IVF-PQ on disk (clipsearch.index.ondisk)."""
    rerank: int = DEFAULT_RERANK
    """An on-disk index's candidates per result, re-ranked exactly from its fp16 vectors (1: none)."""
    keep_duplicates: bool = False
    discard_live_changes: bool = False
    """Replace a bundle at `out` even if it holds live changes (clipsearch.store.live), dropping them."""
    batches_per_shard: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    columns: Columns = field(default_factory=Columns)
    progress: bool = True
    caption: CaptionConfig | None = None
    """Generate captions for images without one, with this CoCa model (clipsearch.model.captions)."""
    ocr: OcrConfig | None = None
    """Read the text in every image (clipsearch.model.ocr) into its metadata, searched by keyword."""
    keyword_fields: tuple[str, ...] = ()
    """Metadata fields searched by keyword, besides captions and texts (clipsearch.store.keywords)."""
    fuse: Fusion | None = None
    """Store the vectors of the texts these weights name (caption, ocr) and search images by image and
    texts with these default weights (clipsearch.index.fusion)."""
    engine: str = "local"
    """What embeds the items: 'local' (this process, DataLoader workers) or 'ray' (clipsearch.ingest.distributed)."""
    ray_address: str | None = None
    """The Ray cluster for the 'ray' engine (default: RAY_ADDRESS, else a Ray instance started here)."""
    ray_actors: int | None = None
    """Embedding actors for the 'ray' engine (default: one per GPU of the cluster, else 1)."""

    @property
    def calibration_folder(self) -> Path | None:
        """What an int8 backend is calibrated on: `int8_calibration`, else the images folder being built."""
        if self.int8_calibration is not None:
            return self.int8_calibration
        return self.images if self.images is not None and self.images.is_dir() else None

    @property
    def indexes_video_sound(self) -> bool:
        """Whether the videos' sound tracks are indexed as sounds (there are videos, and it is asked)."""
        return self.videos is not None and self.sound.video_sound

    @property
    def embeds_sounds(self) -> bool:
        """Whether the build has sounds for the audio model: sound files, or the videos' sound tracks."""
        return self.audio is not None or self.indexes_video_sound

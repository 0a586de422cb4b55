"""The core's configuration records: plain frozen values that import neither torch nor FAISS.

The server's settings (app/settings.py) and the indexer's flags read their defaults from here, so
no number is written twice, and reading them loads no model code. Each record is checked where it
is used (CaptionConfig.check is the exception: it names the setting that is wrong).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelLoadError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
OFFLINE_MODEL = "tiny"
"""A tiny architecture shipped in clipsearch/model/model_configs/: random weights, no download, for tests and demos."""

MULTILINGUAL_OFFLINE_MODEL = "tiny-multilingual"
"""`tiny` with a Hugging Face text tower and a tokenizer that splits Chinese into characters, like the
real multilingual models (xlm-roberta-base-ViT-B-32); random weights, no download."""

CHINESE_CLIP_MODELS: dict[str, str | None] = {
    "chinese-clip-vit-base-patch16": "OFA-Sys/chinese-clip-vit-base-patch16",
    "chinese-clip-vit-large-patch14": "OFA-Sys/chinese-clip-vit-large-patch14",
    "chinese-clip-vit-large-patch14-336px": "OFA-Sys/chinese-clip-vit-large-patch14-336px",
    "chinese-clip-vit-huge-patch14": "OFA-Sys/chinese-clip-vit-huge-patch14",
    "tiny-chinese-clip": None,
}
"""The Chinese-CLIP models (clipsearch.model.chinese_clip), by the name a user gives, with the Hugging
Face repository their weights come from by default (None: the offline model, random weights)."""


def default_pretrained(model_name: str) -> str | None:
    """The weights a model name loads when none are named: the default model's tag, a Chinese-CLIP
    model's repository, else none (random weights)."""
    if model_name == DEFAULT_MODEL:
        return DEFAULT_PRETRAINED
    return CHINESE_CLIP_MODELS.get(model_name)


RANDOM_WEIGHTS_SEED = 0
"""Models loaded without pretrained weights or a checkpoint are initialised from this seed."""

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image decoded, in pixels: a decompression bomb is refused before it is decoded."""

DEFAULT_RRF_K = 60
"""The constant K of reciprocal rank fusion (Cormack et al., 2009)."""

DEFAULT_CAPTION_MODEL = "coca_ViT-L-14"
DEFAULT_CAPTION_PRETRAINED = "mscoco_finetuned_laion2b_s13b_b90k"
GENERATION_TYPES = ("beam_search", "top_k", "top_p")
MAX_CAPTION_TOKENS = 76
DEFAULT_VQA_MODEL = "Salesforce/blip-vqa-base"
"""BLIP fine-tuned for visual question answering (BSD-3-Clause, about 385M parameters): short English answers."""
"""CoCa's text context: a caption cannot be longer (start token included)."""


@dataclass(frozen=True)
class ModelRef:
    """Which weights produced a set of embeddings: what a bundle records and a server checks.

    Exactly one of `pretrained` (an open_clip tag) and `checkpoint_sha256` (a local file's hash)
    is set, or neither for random weights (seeded with RANDOM_WEIGHTS_SEED).
    """

    name: str
    pretrained: str | None = None
    checkpoint_sha256: str | None = None

    def describe(self) -> str:
        if self.pretrained:
            return f"{self.name} ({self.pretrained})"
        if self.checkpoint_sha256:
            return f"{self.name} (checkpoint sha256 {self.checkpoint_sha256[:12]}…)"
        return f"{self.name} (random weights, seed {RANDOM_WEIGHTS_SEED})"


@dataclass(frozen=True)
class QueryLimits:
    max_k: int = 100
    max_terms: int = 16
    max_text_chars: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_timeout_s: float = 10.0
    encode_timeout_s: float = 30.0
    max_labels: int = 100
    """Most labels one zero-shot classification may score."""
    max_templates: int = 32
    """Most prompt templates per label."""
    max_explained: int = 16
    """Most items one heatmap request may explain."""
    max_offset: int = 1000
    """Deepest a search may page: results past offset + k are never fetched."""
    max_cutoff_results: int = 10_000
    """Most hits a search with min_score or order_by gathers (all that pass, to count and sort them)."""
    max_audio_seconds: float = 60.0
    """Longest sound clip a query may upload (its windows are embedded and averaged)."""


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video are embedded, and the bounds on reading one (clipsearch.util.video).

    A video is cut into segments at scene changes: a frame examined (`analysis_fps` a second) whose
    small colour picture differs from the last one examined by more than `scene_threshold` (mean
    absolute difference, 0 to 1) starts a segment; so does `max_gap_s` without one, so that a long
    shot is still found in the middle. A video gets at most `max_segments`: past that, the two
    neighbours that differ least are merged. Each segment is embedded by its first frame.
    """

    scene_threshold: float = 0.12
    max_gap_s: float = 10.0
    max_segments: int = 240
    analysis_fps: float = 4.0
    max_seconds: float = 4 * 3600.0
    """Longer videos are refused (a declared duration before decoding; a stream that runs past it, when reached)."""
    max_pixels: int = 8192 * 4320
    """Largest frame decoded (8K), checked on the stream's header before any frame is decoded, and on every frame."""
    decode_timeout_s: float = 600.0
    """Wall-clock bound on reading one video; past it the video is refused, never half-indexed."""

    def as_record(self) -> dict[str, Any]:
        """How videos are cut, as a bundle's manifest records it (the bounds are each reader's own)."""
        return {"scene_threshold": self.scene_threshold, "max_gap_s": self.max_gap_s,
                "max_segments": self.max_segments, "analysis_fps": self.analysis_fps}

    def cutting_as(self, record: dict[str, Any] | None) -> VideoSampling:
        """These bounds, cutting videos as `record` (a manifest's) says; as these say without one."""
        if record is None:
            return self
        return VideoSampling(scene_threshold=float(record["scene_threshold"]), max_gap_s=float(record["max_gap_s"]),
                             max_segments=int(record["max_segments"]), analysis_fps=float(record["analysis_fps"]),
                             max_seconds=self.max_seconds, max_pixels=self.max_pixels,
                             decode_timeout_s=self.decode_timeout_s)


DEFAULT_AUDIO_MODEL = "laion/clap-htsat-unfused"
"""LAION's CLAP (Apache-2.0) through transformers' ClapModel: sounds and English texts in one space of
their own, 512-d, 48 kHz audio in 10 s windows."""
OFFLINE_AUDIO_MODEL = "tiny-clap"
"""A tiny CLAP shipped in model_configs/hf/ (scripts/make-tiny-towers): random weights, for tests."""


@dataclass(frozen=True)
class AudioSampling:
    """How a sound file is cut into windows, and the bounds on reading one (clipsearch.util.audio).

    A recording is cut into windows of the audio model's own length (CLAP's 10 s), starting every
    `hop_s`, the last one ending at the end; a recording shorter than a window is one window.
    Windows overlap so that a sound is whole in at least one of them.
    """

    model: str = DEFAULT_AUDIO_MODEL
    """A Hugging Face repository id or a local directory of a CLAP model, or the offline `tiny-clap`."""
    hop_s: float = 5.0
    max_seconds: float = 4 * 3600.0
    """Longer recordings are refused (a declared duration before decoding; a stream that runs past it, when reached)."""
    decode_timeout_s: float = 600.0
    """Wall-clock bound on reading one recording; past it the recording is refused, never half-indexed."""
    video_sound: bool = False
    """Whether each video's sound track is indexed too, as a sound item of its own with the video's key
    and uri (clipsearch.store.segments.SOUND_OF_VIDEO): found by text→audio and audio→audio queries."""

    def as_record(self, window_s: float, sampling_rate: int) -> dict[str, Any]:
        """How sounds are cut, as a bundle's manifest records it, with the model's window and rate."""
        return {"model": self.model, "hop_s": self.hop_s, "window_s": window_s, "sampling_rate": sampling_rate,
                "video_sound": self.video_sound}

    def cutting_as(self, record: dict[str, Any] | None) -> AudioSampling:
        """These bounds, with the model and hop that `record` (a manifest's) names, and whether its videos'
        sound tracks are indexed (none in a bundle without sounds); these without one."""
        if record is None:
            return replace(self, video_sound=False)
        return AudioSampling(model=str(record["model"]), hop_s=float(record["hop_s"]), max_seconds=self.max_seconds,
                             decode_timeout_s=self.decode_timeout_s,
                             video_sound=bool(record.get("video_sound", False)))


@dataclass(frozen=True)
class Batching:
    """How concurrent queries are grouped: at most `max_batch` per forward pass or search, gathered
    for up to `window_s` after the first (0: only those already waiting, so a lone query never waits)."""

    max_batch: int = 64
    window_s: float = 0.0
    max_background: int = 16
    """Most background items (writes) in one forward pass: what a query may have to wait behind."""


@dataclass(frozen=True)
class WriteLimits:
    max_items: int = 256
    """Most items one write may add or delete."""
    max_key_chars: int = 1024
    max_metadata_bytes: int = 65_536
    """Largest metadata object, as compact JSON."""


@dataclass(frozen=True)
class CompactionPolicy:
    """When a compaction is due, and when it trains an IVF index again."""

    min_changes: int = 1000
    """Never for fewer live and hidden items than this: compacting costs a pass over the whole base."""
    fraction: float = 0.1
    """Due once live and hidden items reach this share of the base."""
    retrain_fraction: float = 0.5
    """An IVF index is trained again (and its recall measured again) once the rows added since its
    training reach this share of the rows it was trained with."""

    def due(self, changes: int, base_count: int) -> bool:
        return changes > 0 and changes >= max(self.min_changes, self.fraction * base_count)


@dataclass(frozen=True)
class CaptionConfig:
    """Which caption model, and how it generates."""

    model: str = DEFAULT_CAPTION_MODEL
    pretrained: str | None = DEFAULT_CAPTION_PRETRAINED
    checkpoint: Path | None = None
    device: str | None = "auto"
    generation: str = "beam_search"
    max_tokens: int = 30
    """Longest caption, in tokens, start and end tokens included."""
    batch_size: int = 32
    """Images captioned per generate() call by the indexer (beam search multiplies it by its beams)."""

    def check(self) -> None:
        if self.generation not in GENERATION_TYPES:
            raise ModelLoadError(f"must be one of {', '.join(GENERATION_TYPES)}, got {self.generation!r}",
                                 "caption_generation")
        if not 7 <= self.max_tokens <= MAX_CAPTION_TOKENS:  # CoCa's minimum caption length is 5 tokens + 2
            raise ModelLoadError(f"must be between 7 and {MAX_CAPTION_TOKENS}, got {self.max_tokens}",
                                 "caption_max_tokens")


@dataclass(frozen=True)
class VqaConfig:
    """Which question-answering model, and how it answers (clipsearch.model.vqa)."""

    model: str = DEFAULT_VQA_MODEL
    """A Hugging Face repository id or a local directory of a BLIP question-answering model, or the
    offline `tiny-blip-vqa`."""
    device: str | None = "auto"
    beams: int = 3
    """Beam search's width, as BLIP's own VQA inference (3 beams, at most 10 tokens)."""
    max_answer_tokens: int = 10
    max_question_chars: int = 300
    max_hits: int = 20
    """Most search results one `ask` answers about (each is a forward pass of the whole model)."""


OCR_ENGINE = "rapidocr"
"""PP-OCR's detection, orientation and recognition models run by RapidOCR on ONNX Runtime
(clipsearch.model.ocr): the `[ocr]` extra, whose wheel carries the models."""


@dataclass(frozen=True)
class OcrConfig:
    """How text is read from images (clipsearch.model.ocr), with the defaults measured on the rendered
    corpus (docs/quality.md, "Text in images")."""

    detection_side: int = 736
    """The image is scaled so that its shorter side is this many pixels for text detection (PP-OCR's
    and Immich's 736); larger finds smaller text and costs more."""
    max_side: int = 2000
    """A larger image is scaled down to this longest side before anything else: a huge photo costs
    no more than a large one."""
    detection_min_score: float = 0.5
    """A detected text box below this mean score is dropped."""
    recognition_min_score: float = 0.5
    """A recognised line below this confidence is dropped."""
    detection_model: Path | None = None
    recognition_model: Path | None = None
    classifier_model: Path | None = None
    """ONNX files in place of those the engine ships (PP-OCRv4 mobile), e.g. PP-OCRv5 or the larger
    server models; None: the shipped one."""
    threads: int = 1
    """ONNX Runtime threads per reader. The build runs one reader in each loader worker, beside the
    image tower, so one thread each keeps them from fighting over the cores."""
    timeout_s: float = 20.0
    """An image whose text is not read within this long is indexed without it, and reported."""

    def as_record(self, engine: str) -> dict[str, Any]:
        """The manifest's record of a collection read with these settings by `engine` (a description)."""
        settings = {name: str(value) if isinstance(value, Path) else value for name, value in asdict(self).items()}
        return {"engine": engine, "settings": settings}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> OcrConfig:
        """The settings of a manifest's record (unknown names, from a newer version, left out)."""
        settings = dict(record.get("settings", {}))
        for name in ("detection_model", "recognition_model", "classifier_model"):
            if settings.get(name) is not None:
                settings[name] = Path(settings[name])
        return cls(**{field.name: settings[field.name] for field in fields(cls) if field.name in settings})

    def check(self) -> None:
        """ModelLoadError naming the setting that is wrong."""
        if not 32 <= self.detection_side <= 4096:
            raise ModelLoadError(f"must be between 32 and 4096, got {self.detection_side}", "ocr_detection_side")
        if not self.detection_side <= self.max_side <= 16384:
            raise ModelLoadError(f"must be between the detection side ({self.detection_side}) and 16384, "
                                 f"got {self.max_side}", "ocr_max_side")
        for name, score in (("ocr_detection_min_score", self.detection_min_score),
                            ("ocr_recognition_min_score", self.recognition_min_score)):
            if not 0.0 <= score < 1.0:
                raise ModelLoadError(f"must be at least 0 and below 1, got {score}", name)
        for name, path in (("ocr_detection_model", self.detection_model),
                           ("ocr_recognition_model", self.recognition_model),
                           ("ocr_classifier_model", self.classifier_model)):
            if path is not None and not path.is_file():
                raise ModelLoadError(f"no file at {path}", name)
        if not 1 <= self.threads <= 256:
            raise ModelLoadError(f"must be between 1 and 256, got {self.threads}", "ocr_threads")
        if not self.timeout_s > 0:
            raise ModelLoadError(f"must be above 0, got {self.timeout_s}", "ocr_timeout_s")


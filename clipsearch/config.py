"""The core's configuration records: plain frozen values that import neither torch nor FAISS.

The server's settings (app/settings.py) and the indexer's flags read their defaults from here, so
no number is written twice, and reading them loads no model code. Each record is checked where it
is used (CaptionConfig.check is the exception: it names the setting that is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

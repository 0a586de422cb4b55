"""What a query is made of, the limits it must respect, and the weighted-sum maths. No model needed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipsearch.config import QueryLimits
from clipsearch.errors import InvalidQuery
from clipsearch.index.fusion import Fusion
from clipsearch.modality import Modality
from clipsearch.search.cutoff import OrderBy, check_min_score
from clipsearch.store.filters import Filter

GROUP_BY_ITEM, GROUP_BY_SEGMENTS = "item", "segments"


@dataclass(frozen=True)
class ResultOptions:
    """Which of a search's results come back: those passing `filter` and scoring `min_score` or more,
    with near-duplicates (cosine ≥ `dedup`) collapsed into the best-ranked of each group, sorted by
    `order_by` when given (else best first), from `offset` on; image items scored with `fusion`'s
    weights of image and caption, when given (else the bundle's)."""

    filter: Filter | None = None
    offset: int = 0
    dedup: float | None = None
    fusion: Fusion | None = None
    min_score: float | None = None
    order_by: OrderBy | None = None
    group_by: str = GROUP_BY_ITEM
    """For video results: each video once, by its best segment ('item'), or every segment found
    ('segments'; clipsearch.store.segments)."""

    @property
    def by_segments(self) -> bool:
        return self.group_by == GROUP_BY_SEGMENTS

    @property
    def cut_off(self) -> bool:
        """Whether every hit that passes must be gathered (clipsearch.search.cutoff)."""
        return self.min_score is not None or self.order_by is not None


@dataclass(frozen=True)
class TextTerm:
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class ImageTerm:
    data: bytes
    weight: float = 1.0


@dataclass(frozen=True)
class ItemTerm:
    item_id: int
    weight: float = 1.0


Term = TextTerm | ImageTerm | ItemTerm


@dataclass(frozen=True)
class Encoding:
    """One forward pass that embedded (part of) a query: the tower and the seconds its whole batch took."""

    tower: Modality
    seconds: float


@dataclass(frozen=True)
class WeightedPart:
    """One term of a composed query: its weight, its unit vector, and its share's divisor (the
    norm of the weighted sum before renormalisation)."""

    weight: float
    vector: np.ndarray
    norm: float


@dataclass(frozen=True)
class QueryVector:
    """A unit query vector, float32 (d,); the fields whose text was cut to the model's context; the
    forward passes that made it (none for a stored item's vector); for a weighted sum, its terms,
    in the order given, zero weights left out."""

    vector: np.ndarray
    truncated: tuple[str, ...] = ()
    encodings: tuple[Encoding, ...] = ()
    parts: tuple[WeightedPart, ...] = ()


def check_text(text: str, field: str, limits: QueryLimits) -> None:
    if not text.strip():
        raise InvalidQuery(field, "must not be empty or only whitespace")
    if len(text) > limits.max_text_chars:
        raise InvalidQuery(field, f"at most {limits.max_text_chars} characters, got {len(text)}")
    if "\x00" in text:
        raise InvalidQuery(field, "must not contain NUL characters")


def check_k(k: int, limits: QueryLimits) -> None:
    if not 1 <= k <= limits.max_k:
        raise InvalidQuery("k", f"must be between 1 and {limits.max_k}, got {k}")


def check_options(options: ResultOptions, limits: QueryLimits) -> None:
    if not 0 <= options.offset <= limits.max_offset:
        raise InvalidQuery("offset", f"must be between 0 and {limits.max_offset}, got {options.offset}")
    if options.dedup is not None and not 0 < options.dedup <= 1:
        raise InvalidQuery("dedup", f"a cosine threshold must be above 0 and at most 1, got {options.dedup}")
    check_min_score(options.min_score)
    if options.group_by not in (GROUP_BY_ITEM, GROUP_BY_SEGMENTS):
        raise InvalidQuery("group_by", f"'{GROUP_BY_ITEM}' or '{GROUP_BY_SEGMENTS}', got {options.group_by!r}")


def check_grouping(options: ResultOptions, target: Modality, by_vector: bool) -> None:
    """Refuse `group_by: segments` where there are no segments, or with an option that compares whole items."""
    if not options.by_segments:
        return
    if not target.timed:
        raise InvalidQuery("group_by", f"only video and sound results have segments; the target is {target.value}")
    if not by_vector:
        raise InvalidQuery("group_by", "segments are found by vector search: use mode 'vector'")
    for name in ("dedup", "order_by", "min_score"):
        if getattr(options, name) is not None:
            raise InvalidQuery(name, "not with group_by 'segments': it compares whole items")


def check_terms(terms: Sequence[Term], field: str, limits: QueryLimits) -> None:
    """Refuse a composed query before any of its terms is embedded."""
    if not terms:
        raise InvalidQuery(field, "give at least one query term")
    if len(terms) > limits.max_terms:
        raise InvalidQuery(field, f"at most {limits.max_terms} terms, got {len(terms)}")
    for number, term in enumerate(terms):
        if not math.isfinite(term.weight):
            raise InvalidQuery(f"{field}[{number}].weight", "must be a finite number")
    if all(term.weight == 0 for term in terms):
        raise InvalidQuery(field, "all weights are zero")
    for number, term in enumerate(terms):
        if isinstance(term, TextTerm) and term.weight != 0:
            check_text(term.text, f"{field}[{number}].text", limits)


def weighted_sum(parts: Sequence[tuple[float, QueryVector]], field: str) -> QueryVector:
    """The sum of weight × unit vector over `parts`, renormalised to unit length (float32 (d,))."""
    total = np.zeros(len(parts[0][1].vector), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught just below, by name
        for weight, part in parts:
            total += weight * part.vector.astype(np.float64)
        norm = float(np.linalg.norm(total))
    if not math.isfinite(norm):
        raise InvalidQuery(field, "the weights are too large to combine")
    if norm < 1e-6:
        raise InvalidQuery(field, "the weighted terms cancel each other out; nothing is left to search for")
    return QueryVector((total / norm).astype(np.float32),
                       tuple(name for _, part in parts for name in part.truncated),
                       tuple(encoding for _, part in parts for encoding in part.encodings),
                       tuple(WeightedPart(weight, part.vector, norm) for weight, part in parts))

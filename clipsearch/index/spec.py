"""What an index is and how well it does, as the bundle manifest records it; the defaults that choose
it. Imports no FAISS, so the manifest can be read without it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

EXACT_FACTORY = "Flat"
DEFAULT_FLAT_THRESHOLD = 1_000_000
"""Exact search up to here. Generous on purpose: cross-modal queries (text against an image
index) are out of distribution for ANN structures and lose much more recall than same-modality
queries do, so approximate search should only start where exact search is really too slow."""
DEFAULT_ON_DISK_THRESHOLD = 10_000_000
"""Past here, by default, a compressed IVF-PQ index on disk (clipsearch.index.ondisk): ten million
512-d float32 vectors are 20 GB, more than a server should hold in memory or page through, while
their PQ64 codes are 0.7 GB."""
RECALL_TARGET = 0.95
RECALL_QUERIES = 1000
TRAINING_POINTS_PER_LIST = 64
DEFAULT_RERANK = 10
"""Candidates taken from the compressed index per result wanted, then scored exactly: PQ codes
rank the right neighbours near the top but not in order. The build doubles it where the recall
target needs more (_tune), and records what it chose."""


@dataclass(frozen=True)
class IndexSpec:
    """How an index was built and how well it does: recorded in the bundle manifest."""

    factory: str
    exact: bool
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_10: float | None = None
    recall_queries: str | None = None
    """Where the recall queries came from, e.g. 'text (cross-modal)'."""


def default_factory(count: int, flat_threshold: int = DEFAULT_FLAT_THRESHOLD,
                    on_disk_threshold: int = DEFAULT_ON_DISK_THRESHOLD, dim: int = 512) -> str:
    """Flat (exact) up to `flat_threshold` vectors, then an IVF with about 4·√n lists: its vectors
    whole up to `on_disk_threshold`, past it PQ codes of about dim/8 bytes (clipsearch.index.ondisk)."""
    if count <= flat_threshold:
        return EXACT_FACTORY
    lists = 1 << round(math.log2(4 * math.sqrt(count)))
    if count <= on_disk_threshold:
        return f"IVF{lists},Flat"
    code_bytes = max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)
    return f"IVF{lists},PQ{code_bytes}"

"""How a text search ranks: by vector, by keyword, or both fused (hybrid). No model needed.

Hybrid search fuses the vector ranking and the keyword ranking (clipsearch.store.keywords) of the same
candidates, each taken to the same depth:

* reciprocal rank fusion (`rrf`, the default, as Weaviate, Qdrant and Elasticsearch do): an item
  scores 2·w/(K + vector rank) + 2·(1 − w)/(K + keyword rank), ranks from 1, a list it is not in
  adding nothing; w = `vector_weight` (0.5: plain RRF, Σ 1/(K + rank)) and K the server's RRF
  constant (60, from Cormack et al., 2009). Only ranks count, so cosines and BM25 need no common scale.
* a weighted mix of normalised scores (`weighted`): each list's scores are scaled to [0, 1] over its
  own candidates (min → 0, max → 1; all equal → 1), and an item scores w·vector + (1 − w)·keyword,
  0 for a list it is not in.

Ties go to the smaller id, so a ranking is the same every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from clipsearch.errors import InvalidQuery

DEFAULT_RRF_K = 60
HYBRID_DEPTH = 50
"""Each list of a hybrid search gives at least this many candidates (more for deep pages)."""


class SearchMode(StrEnum):
    VECTOR = "vector"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


class FusionMethod(StrEnum):
    RRF = "rrf"
    WEIGHTED = "weighted"


@dataclass(frozen=True)
class Ranking:
    """How a text search ranks its results (see the module's docstring)."""

    mode: SearchMode = SearchMode.VECTOR
    method: FusionMethod = FusionMethod.RRF
    vector_weight: float = 0.5


@dataclass(frozen=True)
class RankedList:
    """One ranking: ids (int64) and scores (higher is better), best first."""

    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> RankedList:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass(frozen=True)
class Fused:
    """One result of a fused ranking: its score, and its rank (from 1) in each list it came from."""

    item_id: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)


def check_ranking(ranking: Ranking) -> None:
    if not (math.isfinite(ranking.vector_weight) and 0 <= ranking.vector_weight <= 1):
        raise InvalidQuery("hybrid.vector_weight", f"must be between 0 and 1, got {ranking.vector_weight}")


def fuse(lists: dict[str, RankedList], ranking: Ranking, rrf_k: int = DEFAULT_RRF_K) -> list[Fused]:
    """The fused ranking of `lists` ('vector' and 'keyword'), best first."""
    weights = {"vector": ranking.vector_weight, "keyword": 1 - ranking.vector_weight}
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ranked in lists.items():
        contributions = _contributions(ranked, ranking.method, rrf_k)
        for rank, (item_id, contribution) in enumerate(zip(ranked.ids.tolist(), contributions, strict=True), 1):
            scores[item_id] = scores.get(item_id, 0.0) + weights[name] * contribution
            ranks.setdefault(item_id, {})[name] = rank
    order = sorted(scores, key=lambda item_id: (-scores[item_id], item_id))
    return [Fused(item_id, scores[item_id], ranks[item_id]) for item_id in order]


def _contributions(ranked: RankedList, method: FusionMethod, rrf_k: int) -> list[float]:
    if method is FusionMethod.RRF:
        return [2.0 / (rrf_k + rank) for rank in range(1, len(ranked.ids) + 1)]
    scores = ranked.scores.astype(np.float64)
    if not len(scores):
        return []
    low, high = float(scores.min()), float(scores.max())
    return [1.0] * len(scores) if high == low else ((scores - low) / (high - low)).tolist()


def merge_ranked(first: RankedList, second: RankedList, depth: int) -> RankedList:
    """Two disjoint rankings merged by score (ties by id), the best `depth`."""
    ids = np.concatenate([first.ids, second.ids])
    scores = np.concatenate([first.scores, second.scores]).astype(np.float32)
    order = np.lexsort((ids, -scores))[:depth]
    return RankedList(ids[order], scores[order])

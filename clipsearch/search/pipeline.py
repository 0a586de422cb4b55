"""The batching pipeline: concurrent queries share forward passes and searches.

Texts share one pass of the text tower and images one of the image tower; the queries among them
that also want a search (a plain text or image search) are searched in that same step, one search
per target modality and filter, at the largest k asked. Vectors that are already embedded (composed queries)
are searched in batches of their own. Each stage is a MicroBatcher with one thread: one forward
pass per tower at a time (concurrent passes on one device only compete for it, and CUDA graphs
need it) and one search per index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from clipsearch.config import Batching
from clipsearch.index.fusion import Fusion
from clipsearch.index.searchers import Allowed, Searcher
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.util.batching import MicroBatcher


@dataclass(frozen=True)
class Pending:
    """A query waiting for its tower's next batch: what to embed and, if `target` is set, where to
    search it (among the `allowed` items only, when given)."""

    payload: str | torch.Tensor
    target: Modality | None = None
    k: int = 0
    allowed: Allowed | None = None
    fusion: Fusion | None = None
    """Search image (video) items by image (segment) and caption with these weights (clipsearch.index.fusion)."""


@dataclass(frozen=True)
class Embedded:
    """A query's unit vector (float32 (d,)), its results if it asked for a search, and its batch's times."""

    vector: np.ndarray
    found: TopK | None
    encode_s: float
    search_s: float


@dataclass(frozen=True)
class Searched:
    found: TopK
    search_s: float


SearchRequest = tuple[np.ndarray, int, Allowed | None]
"""An embedded vector, its k, and the items it may find (None: all)."""

FUSED = "+caption"
"""A fused search's stage is named by its target and this: "image+caption", "video+caption"
(clipsearch.index.fusion)."""


class QueryPipeline:
    """The batchers of one search service, and the fused encode-and-search steps they run."""

    def __init__(self, encoder: ClipEncoder, searchers: Mapping[Modality, Searcher], batching: Batching,
                 fused: Mapping[Modality, Searcher] | None = None) -> None:
        """`fused` searches image items by their fused rows, [image | caption] (clipsearch.index.fusion),
        held as the image searcher holds the images (same ids, same rows or kind of index), so that
        the items a filter allows serve both; and video items by their segments', likewise."""
        self.encoder = encoder
        self.searchers = searchers
        self.fused = dict(fused or {})
        size, window = batching.max_batch, batching.window_s
        self._towers = {
            Modality.TEXT: MicroBatcher(self._embed_texts, size, window, name="encode-text",
                                        max_background=batching.max_background),
            Modality.IMAGE: MicroBatcher(self._embed_images, size, window, name="encode-image",
                                         max_background=batching.max_background)}
        self._searches = {modality: MicroBatcher(self._search_vectors(searcher), size, window,
                                                 name=f"search-{modality.value}")
                          for modality, searcher in searchers.items()}
        self._fused_searches = {modality: MicroBatcher(self._search_vectors(searcher), size, window,
                                                       name=f"search-{modality.value}{FUSED}")
                                for modality, searcher in self.fused.items()}

    def embed(self, tower: Modality, pending: Pending, background: bool = False) -> Future[Embedded]:
        """Queue a text (TEXT) or prepared pixels (IMAGE) for its tower's next batch; a `background`
        one (a write) after every waiting query."""
        return self._towers[tower].submit(pending, background)

    def search(self, vector: np.ndarray, target: Modality, k: int, allowed: Allowed | None = None,
               fusion: Fusion | None = None) -> Future[Searched]:
        """Queue an embedded vector (float32 (d,)) for the next search of `target`, among `allowed` if
        given; with `fusion`, of the image (video) items' fused rows."""
        if fusion is not None:
            return self._fused_searches[target].submit((fusion.expand(vector[None])[0], k, allowed))
        return self._searches[target].submit((vector, k, allowed))

    def batch_counts(self) -> dict[str, tuple[int, int]]:
        """(batches, queries) processed so far, by stage ('encode-text', 'encode-image', 'search-image', …)."""
        return {batcher.name: (batcher.batches, batcher.items) for batcher in self._batchers()}

    def mean_batches(self) -> dict[str, float]:
        """Queries per batch so far, by stage."""
        return {stage: round(items / batches, 3) if batches else 0.0
                for stage, (batches, items) in self.batch_counts().items()}

    def close(self) -> None:
        for batcher in self._batchers():
            batcher.close()
        for searcher in [*self.searchers.values(), *self.fused.values()]:
            searcher.close()

    def _batchers(self) -> list[MicroBatcher[Any, Any]]:
        return [*self._towers.values(), *self._searches.values(), *self._fused_searches.values()]

    def _embed_texts(self, pending: list[Pending]) -> list[Embedded]:
        started = time.perf_counter()
        vectors = self.encoder.encode_texts([cast(str, query.payload) for query in pending])
        return self._search_embedded(vectors, pending, time.perf_counter() - started)

    def _embed_images(self, pending: list[Pending]) -> list[Embedded]:
        started = time.perf_counter()
        vectors = self.encoder.encode_images(torch.stack([cast(torch.Tensor, query.payload) for query in pending]))
        return self._search_embedded(vectors, pending, time.perf_counter() - started)

    def _search_embedded(self, vectors: np.ndarray, pending: list[Pending], encode_s: float) -> list[Embedded]:
        """One search per target and filter for the batch's queries that have one, at the largest k among them."""
        found: list[TopK | None] = [None] * len(pending)
        started = time.perf_counter()
        groups = _groups([(query.target, query.allowed, query.fusion is not None) for query in pending])
        for (target, _, fused), rows in groups.items():
            if target is None:
                continue
            if fused:  # each query with its own weights, all in one product
                searcher = self.fused[target]
                queries = np.stack([cast(Fusion, pending[row].fusion).expand(vectors[row][None])[0] for row in rows])
            else:
                searcher, queries = self.searchers[target], vectors[rows]
            results = searcher.search(queries, max(pending[row].k for row in rows), pending[rows[0]].allowed)
            for number, row in enumerate(rows):
                found[row] = results.row(number, pending[row].k)
        search_s = time.perf_counter() - started
        return [Embedded(vector, row_found, encode_s, search_s)
                for vector, row_found in zip(vectors, found, strict=True)]

    def _search_vectors(self, searcher: Searcher) -> Callable[[list[SearchRequest]], list[Searched]]:
        def search_batch(queries: list[SearchRequest]) -> list[Searched]:
            # One search per filter at the largest k asked for; each query keeps its own first k.
            found: list[TopK | None] = [None] * len(queries)
            started = time.perf_counter()
            for (allowed,), rows in _groups([(allowed,) for _, _, allowed in queries]).items():
                results = searcher.search(np.stack([queries[row][0] for row in rows]),
                                          max(queries[row][1] for row in rows), allowed)
                for number, row in enumerate(rows):
                    found[row] = results.row(number, queries[row][1])
            search_s = time.perf_counter() - started
            return [Searched(cast(TopK, row_found), search_s) for row_found in found]
        return search_batch




def _groups(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[int]]:
    """The positions of each distinct key, in first-seen order (Allowed compares by identity)."""
    grouped: dict[tuple[Any, ...], list[int]] = {}
    for position, key in enumerate(keys):
        grouped.setdefault(key, []).append(position)
    return grouped

"""Searches by vector: a text or an image embedded and searched in the same batch of the model's
pass (clipsearch.search.pipeline), or a vector searched in the search batcher; the base's results
merged with the live items', video segments gathered into their items, then paged."""

from __future__ import annotations

import numpy as np
import torch

from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.search.embedding import QueryEmbedder
from clipsearch.search.pipeline import Embedded
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.results import Answer, Pager, fetch_size
from clipsearch.search.scope import Scope, best_per_item, with_live
from clipsearch.store.collection import Collection

SEGMENTS_OVERFETCH = 8
"""A video search fetches this many segments per item it wants (more, again, while too few items
remain): a video's best moments are often neighbours."""


class VectorSearch:
    def __init__(self, collection: Collection, embedder: QueryEmbedder) -> None:
        self.embedder, self.pipeline = embedder, embedder.pipeline
        self.pager = Pager(collection, self.deeper, embedder.limits.max_cutoff_results)

    def text(self, text: str, field: str, target: Modality, k: int, options: ResultOptions, scope: Scope) -> Answer:
        fetch = self._vectors_to_fetch(fetch_size(k, options), target, options)
        embedded = self.embedder.wait(self.embedder.submit_text(text, field, self._base_target(scope, target), fetch,
                                                                scope.base, scope.fusion))
        return self._answer(self.embedder.text_vector(embedded, text, field), embedded, target, k, options, scope)

    def image(self, pixels: torch.Tensor, target: Modality, k: int, options: ResultOptions, scope: Scope) -> Answer:
        fetch = self._vectors_to_fetch(fetch_size(k, options), target, options)
        embedded = self.embedder.wait(self.embedder.submit_image(pixels, self._base_target(scope, target), fetch,
                                                                 scope.base, scope.fusion))
        return self._answer(self.embedder.image_vector(embedded), embedded, target, k, options, scope)

    def vector(self, query: QueryVector, target: Modality, k: int, options: ResultOptions, scope: Scope) -> Answer:
        fetch = fetch_size(k, options)
        if options.by_segments:
            found, search_s = self.vectors(query.vector, target, fetch, scope)
        else:
            found, search_s = self.deeper(query.vector, target, fetch, scope)
        return self.pager.page(query, found, search_s, target, k, options, scope)

    def deeper(self, vector: np.ndarray, target: Modality, fetch: int, scope: Scope) -> tuple[TopK, float]:
        """The top `fetch` items (a video by its best segment) of the base and the live items together."""
        if not target.timed:
            return self.vectors(vector, target, fetch, scope)
        asked = fetch * SEGMENTS_OVERFETCH
        found, search_s = self.vectors(vector, target, asked, scope)
        return self._best_segments(found, asked, search_s, vector, target, fetch, scope)

    def _best_segments(self, found: TopK, asked: int, search_s: float, vector: np.ndarray, target: Modality,
                       fetch: int, scope: Scope) -> tuple[TopK, float]:
        """The top `fetch` video items of the `asked` segments `found`, each scored by its best segment
        (searching again, deeper, while too few items remain and more segments exist)."""
        while True:
            items = best_per_item(found)
            # Fewer segments than asked for: the search gave every one it can.
            if items.ids.shape[1] >= fetch or int((found.ids[0] >= 0).sum()) < asked:
                return TopK(items.scores[:, :fetch], items.ids[:, :fetch]), search_s
            asked *= SEGMENTS_OVERFETCH
            found, seconds = self.vectors(vector, target, asked, scope)
            search_s += seconds

    def vectors(self, vector: np.ndarray, target: Modality, fetch: int, scope: Scope) -> tuple[TopK, float]:
        """The top `fetch` vectors of the base (through the search batcher) and the live items together
        (a video's segments each on its own)."""
        found, search_s = TopK.empty(1), 0.0
        if scope.searches_base:
            searched = self.embedder.wait(self.pipeline.search(vector, target, fetch, scope.base, scope.fusion),
                                          "the search")
            found, search_s = searched.found, searched.search_s
        return with_live(found, scope, vector, fetch), search_s

    @staticmethod
    def _base_target(scope: Scope, target: Modality) -> Modality | None:
        """Where the fused encode-and-search step searches the base: nowhere when it holds nothing allowed."""
        return target if scope.searches_base else None

    @staticmethod
    def _vectors_to_fetch(fetch: int, target: Modality, options: ResultOptions) -> int:
        """How many vectors a search of `fetch` results fetches first: a video's segments are several."""
        return fetch * SEGMENTS_OVERFETCH if target.timed and not options.by_segments else fetch

    def _answer(self, query: QueryVector, embedded: Embedded, target: Modality, k: int, options: ResultOptions,
                scope: Scope) -> Answer:
        base = embedded.found if embedded.found is not None else TopK.empty(1)
        fetch = fetch_size(k, options)
        asked = self._vectors_to_fetch(fetch, target, options)
        found, search_s = with_live(base, scope, query.vector, asked), embedded.search_s
        if target.timed and not options.by_segments:
            found, search_s = self._best_segments(found, asked, search_s, query.vector, target, fetch, scope)
        return self.pager.page(query, found, search_s, target, k, options, scope)


"""Searches by vector: a text or an image embedded and searched in the same batch of the model's
pass (clipsearch.search.pipeline), or a vector searched in the search batcher; the base's results
merged with the live items', then paged."""

from __future__ import annotations

import numpy as np
import torch

from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.search.embedding import QueryEmbedder
from clipsearch.search.pipeline import Embedded
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.results import Answer, Pager, fetch_size
from clipsearch.search.scope import Scope, with_live
from clipsearch.store.collection import Collection


class VectorSearch:
    def __init__(self, collection: Collection, embedder: QueryEmbedder) -> None:
        self.embedder, self.pipeline = embedder, embedder.pipeline
        self.pager = Pager(collection, self.deeper, embedder.limits.max_cutoff_results)

    def text(self, text: str, field: str, target: Modality, k: int, options: ResultOptions, scope: Scope) -> Answer:
        fetch = fetch_size(k, options)
        embedded = self.embedder.wait(self.embedder.submit_text(text, field, self._base_target(scope, target), fetch,
                                                                scope.base, scope.fusion))
        return self._answer(self.embedder.text_vector(embedded, text, field), embedded, target, k, options, scope)

    def image(self, pixels: torch.Tensor, target: Modality, k: int, options: ResultOptions, scope: Scope) -> Answer:
        fetch = fetch_size(k, options)
        embedded = self.embedder.wait(self.embedder.submit_image(pixels, self._base_target(scope, target), fetch,
                                                                 scope.base, scope.fusion))
        return self._answer(self.embedder.image_vector(embedded), embedded, target, k, options, scope)

    def vector(self, query: QueryVector, target: Modality, k: int, options: ResultOptions, scope: Scope) -> Answer:
        found, search_s = self.deeper(query.vector, target, fetch_size(k, options), scope)
        return self.pager.page(query, found, search_s, target, k, options, scope)

    def deeper(self, vector: np.ndarray, target: Modality, fetch: int, scope: Scope) -> tuple[TopK, float]:
        """The top `fetch` of the base (through the search batcher) and the live items together."""
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

    def _answer(self, query: QueryVector, embedded: Embedded, target: Modality, k: int, options: ResultOptions,
                scope: Scope) -> Answer:
        base = embedded.found if embedded.found is not None else TopK.empty(1)
        found = with_live(base, scope, query.vector, fetch_size(k, options))
        return self.pager.page(query, found, embedded.search_s, target, k, options, scope)

"""Explanations of a search's results (the maths is clipsearch.search.explain): each query term's
share of each hit's score, and where in each image item a query lights up.

Heatmaps take one extra image forward per item: they have their own batcher, so a burst of them
queues there and never ahead of searches in the model's batchers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from clipsearch.errors import InvalidQuery
from clipsearch.index.fusion import Fusion, TextVectors, fused_rows
from clipsearch.search import explain
from clipsearch.search.embedding import QueryEmbedder
from clipsearch.search.query import QueryVector, WeightedPart
from clipsearch.store.collection import Collection, Hit
from clipsearch.util.batching import MicroBatcher


class Explainer:
    def __init__(self, collection: Collection, embedder: QueryEmbedder, max_batch: int) -> None:
        self.collection, self.embedder, self.encoder = collection, embedder, embedder.encoder
        self.limits = embedder.limits
        self._patches: explain.PatchFeatures | None = None
        self._heatmaps: MicroBatcher[tuple[torch.Tensor, np.ndarray], np.ndarray] = MicroBatcher(
            self._heatmap_batch, max_batch, name="explain")

    def term_shares(self, query: QueryVector, hits: Sequence[Hit], fusion: Fusion | None = None) -> np.ndarray:
        """Each term's share of each hit's score, float64 (hits, terms). With `fusion` (the search's),
        shares of the fused score: each term's part against the image and its texts."""
        parts = query.parts or (WeightedPart(1.0, query.vector, 1.0),)
        if not hits:
            return np.zeros((0, len(parts)))
        vectors = np.stack([self.collection.scored_vector(hit) for hit in hits])
        if fusion is not None:
            held = [self.collection.text_vectors(hit.item.id) for hit in hits]
            texts = {part: TextVectors(np.stack([found.get(part, np.zeros_like(vectors[0])) for found in held]),
                                       np.array([part in found for found in held]))
                     for part in fusion.text_parts}
            vectors = fused_rows(fusion.text_parts, vectors, texts)
            parts = tuple(replace(part, vector=fusion.expand(part.vector[None])[0]) for part in parts)
        return explain.term_shares(parts, vectors)

    def heatmaps(self, query: QueryVector, item_ids: Sequence[int], field: str = "item_ids") -> list[explain.Heatmap]:
        """Where in each image item the query lights up, one patch grid per item."""
        if not item_ids:
            raise InvalidQuery(field, "give at least one item to explain")
        if len(item_ids) > self.limits.max_explained:
            raise InvalidQuery(field, f"at most {self.limits.max_explained} items, got {len(item_ids)}")
        if self._patches is None:
            self._patches = explain.PatchFeatures(self.encoder.model)
        views = [self.encoder.prepare_image(self.collection.read_image(item_id, f"{field}[{number}]",
                                                                       self.limits.max_pixels))
                 for number, item_id in enumerate(item_ids)]
        futures = [self._heatmaps.submit((view, query.vector)) for view in views]
        grids = [self.embedder.wait(future) for future in futures]
        return [explain.Heatmap(grid, view.permute(1, 2, 0).numpy(), self._patches.method)
                for grid, view in zip(grids, views, strict=True)]

    def close(self) -> None:
        self._heatmaps.close()

    def _heatmap_batch(self, batch: list[tuple[torch.Tensor, np.ndarray]]) -> list[np.ndarray]:
        assert self._patches is not None  # set before anything is submitted
        patches = self._patches(self.encoder.model_input(torch.stack([view for view, _ in batch])))
        return [explain.similarity_grids(patches[number:number + 1], query)[0]
                for number, (_, query) in enumerate(batch)]

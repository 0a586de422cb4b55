"""Queries over a loaded bundle: embed text, images, stored items or weighted mixes, then search.

Everything here is independent of HTTP; the server calls it from worker threads. The callers
name the fields (`field=`), so that errors name them the way the caller's users spell them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from clipsearch import index as faiss_index
from clipsearch.bundle import Bundle
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import InvalidQuery, ItemNotFound, ModalityUnavailable, ServiceBusy
from clipsearch.item_store import Item
from clipsearch.modality import Modality
from clipsearch.pipeline import Batching, Embedded, Pending, QueryPipeline
from clipsearch.query import (
    Encoding,
    ImageTerm,
    QueryLimits,
    QueryVector,
    Term,
    TextTerm,
    check_k,
    check_terms,
    check_text,
    weighted_sum,
)
from clipsearch.searchers import searcher_for
from clipsearch.topk import TopK
from clipsearch.uploads import UploadDecoder

Result = TypeVar("Result")


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float


@dataclass(frozen=True)
class Answer:
    """A query's vector (with the forward passes that made it), its hits, and its batch's search time."""

    query: QueryVector
    hits: list[Hit]
    search_s: float


class SearchService:
    """Embeds queries with the bundle's model and searches the bundle's indices; thread-safe.

    Concurrent queries are micro-batched (clipsearch.pipeline). Exact (Flat) indices are searched
    as a resident matrix on the model's device, others with FAISS, on the GPU when `use_gpu`
    (clipsearch.searchers).
    """

    def __init__(self, encoder: ClipEncoder, bundle: Bundle, limits: QueryLimits | None = None,
                 use_gpu: bool = False, batching: Batching | None = None) -> None:
        limits, batching = limits or QueryLimits(), batching or Batching()
        self.encoder, self.bundle, self.limits = encoder, bundle, limits
        searchers = {modality: searcher_for(index, bundle.manifest.modalities[modality].index.exact,
                                            encoder.device, use_gpu)
                     for modality, index in bundle.indices.items()}
        self.pipeline = QueryPipeline(encoder, searchers, batching)
        self.uploads = UploadDecoder(encoder.prepare_image, encoder.image_size, limits.max_pixels,
                                     limits.decode_timeout_s)

    @property
    def modalities(self) -> set[Modality]:
        return {modality for modality, index in self.bundle.indices.items() if index.ntotal > 0}

    def warm_up(self) -> None:
        """Run one query of each kind through every stage, so the first real one is not slow."""
        gray = self.encoder.prepare_image(Image.new("RGB", (self.encoder.image_size,) * 2, (127, 127, 127)))
        for modality in self.modalities:
            self._wait(self.pipeline.embed(Modality.TEXT, Pending("a photo of a dog", modality, 1)), "the model")
            image = self._wait(self.pipeline.embed(Modality.IMAGE, Pending(gray, modality, 1)), "the model")
            self.search(image.vector, modality, 1)

    def close(self) -> None:
        self.pipeline.close()
        self.uploads.close()

    def mean_batches(self) -> dict[str, float]:
        """Queries per batch so far, by stage."""
        return {stage: round(items / batches, 3) if batches else 0.0
                for stage, (batches, items) in self.pipeline.batch_counts().items()}

    def embed_text(self, text: str, field: str = "text") -> QueryVector:
        return self._text_vector(self._wait(self._submit_text(text, field), "the model"), text, field)

    def embed_image(self, data: bytes, field: str = "file") -> QueryVector:
        return self._image_vector(self._wait(self._submit_image(self.uploads.decode(data, field)), "the model"))

    def search_text(self, text: str, target: Modality, k: int, field: str = "text") -> Answer:
        """Embed `text` and search `target` for it, both in the batch of the text tower's next pass."""
        self.check_target(target, k)
        embedded = self._wait(self._submit_text(text, field, target, k), "the model")
        return self._answer(self._text_vector(embedded, text, field), embedded)

    def search_image(self, data: bytes, target: Modality, k: int, field: str = "file") -> Answer:
        """Decode and embed the image `data` and search `target` for it, batched like search_text."""
        self.check_target(target, k)
        embedded = self._wait(self._submit_image(self.uploads.decode(data, field), target, k), "the model")
        return self._answer(self._image_vector(embedded), embedded)

    def embed_terms(self, terms: Sequence[Term], field: str = "queries") -> QueryVector:
        """The weighted sum of the terms' unit embeddings, renormalised to unit length.

        Every term is submitted (texts to their tower, images to the decoders) before any is
        waited on, so the terms of one query are embedded side by side.
        """
        check_terms(terms, field, self.limits)
        live = [(number, term) for number, term in enumerate(terms) if term.weight != 0]
        texts = {number: self._submit_text(term.text, f"{field}[{number}].text")
                 for number, term in live if isinstance(term, TextTerm)}
        decodings = {number: self.uploads.submit(term.data) for number, term in live if isinstance(term, ImageTerm)}
        images = {number: self._submit_image(self.uploads.result(decoding, f"{field}[{number}].image_b64"))
                  for number, decoding in decodings.items()}
        parts = []
        for number, term in live:
            name = f"{field}[{number}]"
            if isinstance(term, TextTerm):
                part = self._text_vector(self._wait(texts[number], "the model"), term.text, f"{name}.text")
            elif isinstance(term, ImageTerm):
                part = self._image_vector(self._wait(images[number], "the model"))
            else:
                part = QueryVector(self.stored_vector(term.item_id, f"{name}.item_id"))
            parts.append((term.weight, part))
        return weighted_sum(parts, field)

    def search(self, query: np.ndarray, target: Modality, k: int) -> list[Hit]:
        """The k items of `target` modality most similar to `query` (float32 (d,)), best first."""
        return self.search_vector(QueryVector(query), target, k).hits

    def search_vector(self, query: QueryVector, target: Modality, k: int) -> Answer:
        self.check_target(target, k)
        searched = self._wait(self.pipeline.search(query.vector, target, k), "the search")
        return Answer(query, self._hits([searched.found])[0], searched.search_s)

    def search_many(self, queries: np.ndarray, target: Modality, k: int) -> list[list[Hit]]:
        """Top-k for each row of `queries` (float32 (n, d)); scores are cosine similarities."""
        self.check_target(target, k)
        futures = [self.pipeline.search(query, target, k) for query in queries]
        return self._hits([self._wait(future, "the search").found for future in futures])

    def check_target(self, target: Modality, k: int) -> None:
        """Refuse a k out of range or a target modality the bundle lacks, before any work is done."""
        check_k(k, self.limits)
        if target not in self.modalities:
            present = ", ".join(sorted(self.modalities)) or "none"
            raise ModalityUnavailable("target", f"the bundle has no {target.value} items (it has: {present})")

    def item(self, item_id: int, field: str = "id") -> Item:
        found = self.bundle.items.get(item_id)
        if found is None:
            raise ItemNotFound(item_id, field)
        return found

    def stored_vector(self, item_id: int, field: str = "item_id") -> np.ndarray:
        """The vector (float32 (d,)) the bundle holds for an item."""
        item = self.item(item_id, field)
        vector = faiss_index.reconstruct(self.bundle.indices[item.modality], item_id)
        if vector is None:
            raise ItemNotFound(item_id, field, "the item has no stored vector")
        return vector

    def image_path(self, item_id: int, field: str = "id") -> Path:
        """The stored file of an image item; only paths recorded in the bundle are ever returned."""
        item = self.item(item_id, field)
        if item.modality is not Modality.IMAGE:
            raise InvalidQuery(field, f"item {item_id} is a {item.modality.value}, not an image")
        path = Path(item.uri)
        if not path.is_file():
            raise ItemNotFound(item_id, field, "its image file is no longer at the path recorded in the bundle")
        # The indexer records fully resolved paths. If that no longer resolves to itself, a symbolic
        # link was put in its place (or above it) since: it may point anywhere, so nothing is served.
        if path.resolve() != path:
            raise ItemNotFound(item_id, field, "its recorded path now passes through a symbolic link; not served")
        return path

    def _submit_text(self, text: str, field: str, target: Modality | None = None, k: int = 0) -> Future[Embedded]:
        check_text(text, field, self.limits)
        return self.pipeline.embed(Modality.TEXT, Pending(text, target, k))

    def _submit_image(self, pixels: torch.Tensor, target: Modality | None = None, k: int = 0) -> Future[Embedded]:
        return self.pipeline.embed(Modality.IMAGE, Pending(pixels, target, k))

    def _text_vector(self, embedded: Embedded, text: str, field: str) -> QueryVector:
        truncated = (field,) if self.encoder.is_truncated(text) else ()
        return QueryVector(embedded.vector, truncated, (Encoding(Modality.TEXT, embedded.encode_s),))

    def _image_vector(self, embedded: Embedded) -> QueryVector:
        return QueryVector(embedded.vector, (), (Encoding(Modality.IMAGE, embedded.encode_s),))

    def _answer(self, query: QueryVector, embedded: Embedded) -> Answer:
        assert embedded.found is not None  # a target was given
        return Answer(query, self._hits([embedded.found])[0], embedded.search_s)

    def _wait(self, future: Future[Result], waiting_for: str) -> Result:
        try:
            return future.result(timeout=self.limits.encode_timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: the batcher drops it; already running: it finishes unused
            raise ServiceBusy(f"{waiting_for} did not finish within {self.limits.encode_timeout_s:g} s; "
                              "the server is overloaded, try again") from None

    def _hits(self, found: list[TopK]) -> list[list[Hit]]:
        """Search results as hits: ids resolved to items (no result, id -1, is left out)."""
        items = self.bundle.items.get_many([int(item_id) for result in found for item_id in result.ids[0]
                                            if item_id >= 0])
        return [[Hit(items[int(item_id)], float(score))
                 for score, item_id in zip(result.scores[0], result.ids[0], strict=True)
                 if item_id >= 0 and int(item_id) in items]
                for result in found]

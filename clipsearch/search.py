"""Queries over a loaded bundle: embed text, images, stored items or weighted mixes, then search.

Everything here is independent of HTTP; the server calls it from worker threads. Input errors
raise InvalidQuery naming the field (as the API spells it) and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
import torch
from PIL import Image

from clipsearch import index as faiss_index
from clipsearch.batching import MicroBatcher
from clipsearch.bundle import Bundle, Item
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import (
    ImageDecodeError,
    ImageTooLarge,
    InvalidQuery,
    ItemNotFound,
    ModalityUnavailable,
    QueryImageTooLarge,
    ServiceBusy,
)
from clipsearch.exact import ExactIndex
from clipsearch.images import DEFAULT_MAX_PIXELS, decode_image
from clipsearch.modality import Modality

DECODE_WORKERS = 4
"""Query images decoded at once; more would only compete with the model for the CPU."""

Result = TypeVar("Result")


@dataclass(frozen=True)
class QueryLimits:
    max_k: int = 100
    max_terms: int = 16
    max_text_chars: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_timeout_s: float = 10.0
    encode_timeout_s: float = 30.0


@dataclass(frozen=True)
class Batching:
    """How concurrent queries are grouped: at most `max_batch` per forward pass or search, gathered
    for up to `window_s` after the first (0: only those already waiting, so a lone query never waits)."""

    max_batch: int = 64
    window_s: float = 0.0


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
class QueryVector:
    """A unit query vector, float32 (d,), and the fields whose text was cut to the model's context."""

    vector: np.ndarray
    truncated: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float


class SearchService:
    """Embeds queries with the bundle's model and searches the bundle's indices; thread-safe.

    Concurrent queries are micro-batched: texts share one forward pass of the text tower, images
    one of the image tower, and query vectors one search per target modality. Exact (Flat)
    indices are searched as a resident matrix on the model's device (clipsearch.exact); others
    with FAISS, on the GPU when `use_gpu`.
    """

    def __init__(self, encoder: ClipEncoder, bundle: Bundle, limits: QueryLimits = QueryLimits(),
                 use_gpu: bool = False, batching: Batching = Batching()) -> None:
        self.encoder = encoder
        self.bundle = bundle
        self.limits = limits
        self._stored = bundle.indices  # CPU indices: also the source of stored items' vectors
        self._searchers = {modality: self._searcher(index, bundle.manifest.modalities[modality].index.exact, use_gpu)
                           for modality, index in bundle.indices.items()}
        # Each batcher owns one thread: one forward pass per tower at a time (concurrent passes on
        # one device only compete for it, and CUDA graphs need it) and one search per index.
        size, window = batching.max_batch, batching.window_s
        self._text_batches = MicroBatcher(self._encode_texts, size, window, name="encode-text")
        self._image_batches = MicroBatcher(self._encode_images, size, window, name="encode-image")
        self._search_batches = {
            modality: MicroBatcher(self._searcher_batch(modality), size, window, name=f"search-{modality.value}")
            for modality in self._searchers}
        self._decoding = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode")

    def _searcher(self, index: faiss.Index, exact: bool, use_gpu: bool
                  ) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
        if exact and index.ntotal > 0:
            resident = ExactIndex.from_faiss(index, self.encoder.device)

            def search_exact(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
                found = resident.search(queries, k)
                return found.scores, found.ids
            return search_exact
        searchable = faiss_index.to_gpu(index) if use_gpu else index
        return lambda queries, k: faiss_index.search(searchable, queries, k)

    def warm_up(self) -> None:
        """Run one query of each kind through every stage, so the first real one is not slow."""
        gray = Image.new("RGB", (self.encoder.image_size,) * 2, (127, 127, 127))
        vectors = [self.embed_text("a photo of a dog").vector,
                   self._wait(self._image_batches.submit(self.encoder.prepare_image(gray)), "the model")]
        for modality in self.modalities:
            for vector in vectors:
                self.search(vector, modality, 1)

    def close(self) -> None:
        self._text_batches.close()
        self._image_batches.close()
        for batcher in self._search_batches.values():
            batcher.close()
        self._decoding.shutdown(wait=False, cancel_futures=True)

    def mean_batches(self) -> dict[str, float]:
        """Items per batch so far, by stage ('encode-text', 'encode-image', 'search-image', …)."""
        means = {batcher.name: batcher.mean_batch for batcher in (self._text_batches, self._image_batches)}
        means.update({batcher.name: batcher.mean_batch for batcher in self._search_batches.values()})
        return {name: round(mean, 3) for name, mean in means.items()}

    @property
    def modalities(self) -> set[Modality]:
        return {modality for modality, index in self._stored.items() if index.ntotal > 0}

    def embed_text(self, text: str, field: str = "text") -> QueryVector:
        self._check_text(text, field)
        vector = self._wait(self._text_batches.submit(text), "the model")
        return QueryVector(vector, (field,) if self.encoder.is_truncated(text) else ())

    def embed_image(self, data: bytes, field: str = "file") -> QueryVector:
        decoding = self._decoding.submit(self._decode_and_prepare, data)
        try:
            pixels = decoding.result(timeout=self.limits.decode_timeout_s)
        except FutureTimeout:
            decoding.cancel()
            limit = self.limits.decode_timeout_s
            raise InvalidQuery(field, f"the image took longer than {limit:g} s to decode") from None
        except ImageTooLarge as error:
            raise QueryImageTooLarge(field, error.reason) from error
        except ImageDecodeError as error:
            raise InvalidQuery(field, error.reason) from error
        return QueryVector(self._wait(self._image_batches.submit(pixels), "the model"))

    def embed_terms(self, terms: Sequence[Term], field: str = "queries") -> QueryVector:
        """The weighted sum of the terms' unit embeddings, renormalised to unit length."""
        if not terms:
            raise InvalidQuery(field, "give at least one query term")
        if len(terms) > self.limits.max_terms:
            raise InvalidQuery(field, f"at most {self.limits.max_terms} terms, got {len(terms)}")
        for number, term in enumerate(terms):
            if not math.isfinite(term.weight):
                raise InvalidQuery(f"{field}[{number}].weight", "must be a finite number")
        if all(term.weight == 0 for term in terms):
            raise InvalidQuery(field, "all weights are zero")
        total = np.zeros(self.encoder.embedding_dim, dtype=np.float64)
        truncated: list[str] = []
        for number, term in enumerate(terms):
            if term.weight == 0:
                continue
            embedded = self._embed_term(term, f"{field}[{number}]")
            total += term.weight * embedded.vector
            truncated.extend(embedded.truncated)
        norm = float(np.linalg.norm(total))
        if not math.isfinite(norm):
            raise InvalidQuery(field, "the weights are too large to combine")
        if norm < 1e-6:
            raise InvalidQuery(field, "the weighted terms cancel each other out; nothing is left to search for")
        return QueryVector((total / norm).astype(np.float32), tuple(truncated))

    def search(self, query: np.ndarray, target: Modality, k: int) -> list[Hit]:
        """The k items of `target` modality most similar to `query` (float32 (d,)), best first."""
        return self.search_many(query[np.newaxis, :], target, k)[0]

    def check_target(self, target: Modality, k: int) -> None:
        """Refuse a k out of range or a target modality the bundle lacks, before any work is done."""
        if not 1 <= k <= self.limits.max_k:
            raise InvalidQuery("k", f"must be between 1 and {self.limits.max_k}, got {k}")
        if target not in self.modalities:
            present = ", ".join(sorted(self.modalities)) or "none"
            raise ModalityUnavailable("target", f"the bundle has no {target.value} items (it has: {present})")

    def search_many(self, queries: np.ndarray, target: Modality, k: int) -> list[list[Hit]]:
        """Top-k for each row of `queries` (float32 (n, d)); scores are cosine similarities."""
        self.check_target(target, k)
        batcher = self._search_batches[target]
        found = [self._wait(future, "the search") for future in [batcher.submit((query, k)) for query in queries]]
        items = self.bundle.items.get_many([int(item_id) for _, ids in found for item_id in ids if item_id >= 0])
        return [[Hit(items[int(item_id)], float(score)) for score, item_id in zip(scores, ids, strict=True)
                 if item_id >= 0 and int(item_id) in items]
                for scores, ids in found]

    def item(self, item_id: int) -> Item:
        found = self.bundle.items.get(item_id)
        if found is None:
            raise ItemNotFound(item_id)
        return found

    def image_path(self, item_id: int) -> Path:
        """The stored file of an image item; only paths recorded in the bundle are ever returned."""
        item = self.item(item_id)
        if item.modality is not Modality.IMAGE:
            raise InvalidQuery("id", f"item {item_id} is a {item.modality.value}, not an image")
        path = Path(item.uri)
        if not path.is_file():
            raise ItemNotFound(item_id, "its image file is no longer at the path recorded in the bundle")
        # The indexer records fully resolved paths. If that no longer resolves to itself, a symbolic
        # link was put in its place (or above it) since: it may point anywhere, so nothing is served.
        if path.resolve() != path:
            raise ItemNotFound(item_id, "its recorded path now passes through a symbolic link; not served")
        return path

    def _wait(self, future: Future[Result], waiting_for: str) -> Result:
        try:
            return future.result(timeout=self.limits.encode_timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: the batcher drops it; already running: it finishes unused
            raise ServiceBusy(f"{waiting_for} did not finish within {self.limits.encode_timeout_s:g} s; "
                              "the server is overloaded, try again") from None

    def _decode_and_prepare(self, data: bytes) -> torch.Tensor:
        # Draft-mode JPEG decoding at the model's input size, exactly as the indexer decodes: the
        # same file gives the same vector whether it was indexed or uploaded.
        image = decode_image(data, self.limits.max_pixels, draft_size=self.encoder.image_size)
        return self.encoder.prepare_image(image)

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode_texts(texts))

    def _encode_images(self, pixels: list[torch.Tensor]) -> list[np.ndarray]:
        return list(self.encoder.encode_images(torch.stack(pixels)))

    def _searcher_batch(self, target: Modality
                        ) -> Callable[[list[tuple[np.ndarray, int]]], list[tuple[np.ndarray, np.ndarray]]]:
        searcher = self._searchers[target]

        def search_batch(queries: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
            # One search at the largest k asked for; each query keeps its own first k.
            scores, ids = searcher(np.stack([vector for vector, _ in queries]), max(k for _, k in queries))
            return [(scores[row, :k], ids[row, :k]) for row, (_, k) in enumerate(queries)]
        return search_batch

    def _embed_term(self, term: Term, field: str) -> QueryVector:
        if isinstance(term, TextTerm):
            return self.embed_text(term.text, f"{field}.text")
        if isinstance(term, ImageTerm):
            return self.embed_image(term.data, f"{field}.image_b64")
        item = self.bundle.items.get(term.item_id)
        vector = None if item is None else faiss_index.reconstruct(self._stored[item.modality], term.item_id)
        if vector is None:
            raise ItemNotFound(term.item_id)
        return QueryVector(vector)

    def _check_text(self, text: str, field: str) -> None:
        if not text.strip():
            raise InvalidQuery(field, "must not be empty or only whitespace")
        if len(text) > self.limits.max_text_chars:
            raise InvalidQuery(field, f"at most {self.limits.max_text_chars} characters, got {len(text)}")
        if "\x00" in text:
            raise InvalidQuery(field, "must not contain NUL characters")

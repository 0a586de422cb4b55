"""Queries over a loaded bundle: embed text, images, stored items or weighted mixes, then search.

Everything here is independent of HTTP; the server calls it from worker threads. Input errors
raise InvalidQuery naming the field (as the API spells it) and the reason.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

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

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Answer:
    """A query's vector and hits, with the time its batch spent in the model and in the search."""

    query: QueryVector
    hits: list[Hit]
    encode_s: float
    search_s: float


@dataclass(frozen=True)
class _Pending:
    """A query waiting for its tower's next batch: what to embed and, if `target` is set, where to search it."""

    payload: str | torch.Tensor
    target: Modality | None = None
    k: int = 0


_Found = tuple[np.ndarray, np.ndarray]
"""One query's best-first scores (float32 (k,)) and ids (int64 (k,))."""


@dataclass(frozen=True)
class _Embedded:
    vector: np.ndarray
    found: _Found | None
    encode_s: float
    search_s: float


class SearchService:
    """Embeds queries with the bundle's model and searches the bundle's indices; thread-safe.

    Concurrent queries are micro-batched: texts share one forward pass of the text tower and
    images one of the image tower, and the plain queries among them (search_text, search_image)
    are then searched together in that same step, one search per target modality. Composed
    queries are searched in batches of their own. Exact (Flat) indices are searched as a
    resident matrix on the model's device (clipsearch.exact); others with FAISS, on the GPU
    when `use_gpu`.
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
        self._text_batches = MicroBatcher(self._embed_text_batch, size, window, name="encode-text")
        self._image_batches = MicroBatcher(self._embed_image_batch, size, window, name="encode-image")
        self._search_batches = {
            modality: MicroBatcher(self._searcher_batch(modality), size, window, name=f"search-{modality.value}")
            for modality in self._searchers}
        self._decoding = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode")

    def _searcher(self, index: faiss.Index, exact: bool, use_gpu: bool) -> Callable[[np.ndarray, int], _Found]:
        if exact and index.ntotal > 0:
            try:
                resident = ExactIndex.from_faiss(index, self.encoder.device)
            except torch.OutOfMemoryError:
                # Six bytes per dimension per item must fit on the GPU; when they do not, FAISS on
                # the CPU still answers exactly, only slower.
                log.warning("the exact index (%d vectors) does not fit on %s; searching it with FAISS on the CPU",
                            index.ntotal, self.encoder.device)
                return lambda queries, k: faiss_index.search(index, queries, k)

            def search_exact(queries: np.ndarray, k: int) -> _Found:
                found = resident.search(queries, k)
                return found.scores, found.ids
            return search_exact
        searchable = faiss_index.to_gpu(index) if use_gpu else index
        # Text, image and composed batches search from their own threads; a FAISS GPU index must
        # not be searched from two threads at once (its resources are not thread-safe).
        lock = threading.Lock()

        def search_faiss(queries: np.ndarray, k: int) -> _Found:
            with lock:
                return faiss_index.search(searchable, queries, k)
        return search_faiss

    def warm_up(self) -> None:
        """Run one query of each kind through every stage, so the first real one is not slow."""
        gray = self.encoder.prepare_image(Image.new("RGB", (self.encoder.image_size,) * 2, (127, 127, 127)))
        for modality in self.modalities:
            self._wait(self._text_batches.submit(_Pending("a photo of a dog", modality, 1)), "the model")
            image = self._wait(self._image_batches.submit(_Pending(gray, modality, 1)), "the model")
            self.search(image.vector, modality, 1)

    def close(self) -> None:
        self._text_batches.close()
        self._image_batches.close()
        for batcher in self._search_batches.values():
            batcher.close()
        self._decoding.shutdown(wait=False, cancel_futures=True)

    def batch_counts(self) -> dict[str, tuple[int, int]]:
        """(batches, queries) processed so far, by stage ('encode-text', 'encode-image', 'search-image', …)."""
        towers = (self._text_batches, self._image_batches)
        return {batcher.name: (batcher.batches, batcher.items) for batcher in towers} | \
            {batcher.name: (batcher.batches, batcher.items) for batcher in self._search_batches.values()}

    def mean_batches(self) -> dict[str, float]:
        """Queries per batch so far, by stage."""
        return {stage: round(items / batches, 3) if batches else 0.0
                for stage, (batches, items) in self.batch_counts().items()}

    @property
    def modalities(self) -> set[Modality]:
        return {modality for modality, index in self._stored.items() if index.ntotal > 0}

    def embed_text(self, text: str, field: str = "text") -> QueryVector:
        return self._embed_text(text, field, None, 0)[0]

    def embed_image(self, data: bytes, field: str = "file") -> QueryVector:
        return self._embed_image(data, field, None, 0)[0]

    def search_text(self, text: str, target: Modality, k: int, field: str = "text") -> Answer:
        """Embed `text` and search `target` for it, both in the batch of the text tower's next pass."""
        self.check_target(target, k)
        return self._answer(*self._embed_text(text, field, target, k))

    def search_image(self, data: bytes, target: Modality, k: int, field: str = "file") -> Answer:
        """Decode and embed the image `data` and search `target` for it, batched like search_text."""
        self.check_target(target, k)
        return self._answer(*self._embed_image(data, field, target, k))

    def _embed_text(self, text: str, field: str, target: Modality | None, k: int) -> tuple[QueryVector, _Embedded]:
        self._check_text(text, field)
        embedded = self._wait(self._text_batches.submit(_Pending(text, target, k)), "the model")
        return QueryVector(embedded.vector, (field,) if self.encoder.is_truncated(text) else ()), embedded

    def _embed_image(self, data: bytes, field: str, target: Modality | None, k: int
                     ) -> tuple[QueryVector, _Embedded]:
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
        embedded = self._wait(self._image_batches.submit(_Pending(pixels, target, k)), "the model")
        return QueryVector(embedded.vector), embedded

    def _answer(self, query: QueryVector, embedded: _Embedded) -> Answer:
        assert embedded.found is not None  # a target was given
        return Answer(query, self._hits([embedded.found])[0], embedded.encode_s, embedded.search_s)

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
        return self._hits([self._wait(future, "the search") for future in
                           [batcher.submit((query, k)) for query in queries]])

    def _hits(self, found: list[_Found]) -> list[list[Hit]]:
        """Search results as hits: ids resolved to items (no result, id -1, is left out)."""
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

    def _embed_text_batch(self, pending: list[_Pending]) -> list[_Embedded]:
        started = time.perf_counter()
        vectors = self.encoder.encode_texts([cast(str, query.payload) for query in pending])
        return self._search_pending(vectors, pending, time.perf_counter() - started)

    def _embed_image_batch(self, pending: list[_Pending]) -> list[_Embedded]:
        started = time.perf_counter()
        vectors = self.encoder.encode_images(torch.stack([cast(torch.Tensor, query.payload) for query in pending]))
        return self._search_pending(vectors, pending, time.perf_counter() - started)

    def _search_pending(self, vectors: np.ndarray, pending: list[_Pending], encode_s: float) -> list[_Embedded]:
        """One search per target for the batch's queries that have one, at the largest k among them."""
        found: list[_Found | None] = [None] * len(pending)
        started = time.perf_counter()
        for target in {query.target for query in pending if query.target is not None}:
            rows = [row for row, query in enumerate(pending) if query.target is target]
            scores, ids = self._searchers[target](vectors[rows], max(pending[row].k for row in rows))
            for number, row in enumerate(rows):
                found[row] = (scores[number, :pending[row].k], ids[number, :pending[row].k])
        search_s = time.perf_counter() - started
        return [_Embedded(vector, row_found, encode_s, search_s)
                for vector, row_found in zip(vectors, found, strict=True)]

    def _searcher_batch(self, target: Modality) -> Callable[[list[tuple[np.ndarray, int]]], list[_Found]]:
        searcher = self._searchers[target]

        def search_batch(queries: list[tuple[np.ndarray, int]]) -> list[_Found]:
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

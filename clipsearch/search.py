"""Queries over a loaded bundle: embed text, images, stored items or weighted mixes, then search.

Everything here is independent of HTTP; the server calls it from worker threads. Input errors
raise InvalidQuery naming the field (as the API spells it) and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsearch import index as faiss_index
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
from clipsearch.images import DEFAULT_MAX_PIXELS, decode_image
from clipsearch.modality import Modality

DECODE_WORKERS = 4
"""Query images decoded at once; more would only compete with the model for the CPU."""


@dataclass(frozen=True)
class QueryLimits:
    max_k: int = 100
    max_terms: int = 16
    max_text_chars: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_timeout_s: float = 10.0
    encode_timeout_s: float = 30.0


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
    """Embeds queries with the bundle's model and searches the bundle's indices; thread-safe."""

    def __init__(self, encoder: ClipEncoder, bundle: Bundle, limits: QueryLimits = QueryLimits(),
                 use_gpu: bool = False) -> None:
        self.encoder = encoder
        self.bundle = bundle
        self.limits = limits
        self._stored = bundle.indices  # CPU indices: also the source of stored items' vectors
        self._searchable = dict(bundle.indices)
        if use_gpu:
            self._searchable = {modality: faiss_index.to_gpu(index) for modality, index in bundle.indices.items()}
        # One forward pass at a time (concurrent passes on one device only compete for it), and
        # a few decodes at a time; both waited on with a time limit.
        self._encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._decoding = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode")

    def close(self) -> None:
        self._encoding.shutdown(wait=False, cancel_futures=True)
        self._decoding.shutdown(wait=False, cancel_futures=True)

    @property
    def modalities(self) -> set[Modality]:
        return {modality for modality, index in self._stored.items() if index.ntotal > 0}

    def embed_text(self, text: str, field: str = "text") -> QueryVector:
        self._check_text(text, field)
        vector = self._encode(lambda: self.encoder.encode_texts([text])[0])
        return QueryVector(vector, (field,) if self.encoder.is_truncated(text) else ())

    def embed_image(self, data: bytes, field: str = "file") -> QueryVector:
        decoding = self._decoding.submit(decode_image, data, self.limits.max_pixels)
        try:
            image = decoding.result(timeout=self.limits.decode_timeout_s)
        except FutureTimeout:
            decoding.cancel()
            limit = self.limits.decode_timeout_s
            raise InvalidQuery(field, f"the image took longer than {limit:g} s to decode") from None
        except ImageTooLarge as error:
            raise QueryImageTooLarge(field, error.reason) from error
        except ImageDecodeError as error:
            raise InvalidQuery(field, error.reason) from error
        return QueryVector(self._encode(lambda: self.encoder.encode_images([image])[0]))

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
        scores, ids = faiss_index.search(self._searchable[target], queries, k)
        items = self.bundle.items.get_many([int(item_id) for item_id in ids.ravel() if item_id >= 0])
        return [[Hit(items[int(item_id)], float(score)) for score, item_id in zip(row_scores, row_ids, strict=True)
                 if item_id >= 0 and int(item_id) in items]
                for row_scores, row_ids in zip(scores, ids, strict=True)]

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

    def _encode(self, work: Callable[[], np.ndarray]) -> np.ndarray:
        encoding = self._encoding.submit(work)
        try:
            return encoding.result(timeout=self.limits.encode_timeout_s)
        except FutureTimeout:
            encoding.cancel()
            raise ServiceBusy(f"the model did not finish within {self.limits.encode_timeout_s:g} s; "
                              "the server is overloaded, try again") from None

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

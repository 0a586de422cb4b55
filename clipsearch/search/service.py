"""Queries over a loaded bundle: embed text, images, stored items or weighted mixes, then search.

Everything here is independent of HTTP; the server calls it from worker threads. The callers
name the fields (`field=`) where their own names differ; by default errors use the parameters' names
(`text`, `data`, `terms[0].weight`), which the server and the CLI translate for their users.
Items by id, and the image files that may be served, are the collection's (clipsearch.store.collection).
Text searches may also rank by keyword or both (clipsearch.search.hybrid, clipsearch.store.keywords), and a
fused bundle's image items are scored by image and caption together (clipsearch.index.fusion).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from clipsearch.config import DEFAULT_RRF_K, Batching, QueryLimits
from clipsearch.errors import BundleError, InvalidQuery, ModalityUnavailable, ServiceBusy
from clipsearch.index.fusion import Fusion, fused_rows
from clipsearch.index.searchers import Allowed, ExactSearcher, Searcher, searcher_for
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.zero_shot import LabelScore, ZeroShotClassifier
from clipsearch.search import dedup, explain
from clipsearch.search.hybrid import (
    HYBRID_DEPTH,
    Fused,
    RankedList,
    Ranking,
    SearchMode,
    check_ranking,
    fuse,
    merge_ranked,
)
from clipsearch.search.pipeline import Embedded, Pending, QueryPipeline
from clipsearch.search.query import (
    Encoding,
    ImageTerm,
    QueryVector,
    ResultOptions,
    Term,
    TextTerm,
    WeightedPart,
    check_k,
    check_options,
    check_terms,
    check_text,
    weighted_sum,
)
from clipsearch.search.uploads import UploadDecoder
from clipsearch.store import keywords
from clipsearch.store.bundle import Bundle
from clipsearch.store.collection import Collection, Hit
from clipsearch.store.filters import Filter
from clipsearch.store.live import LiveLog, LiveState
from clipsearch.util.batching import MicroBatcher

__all__ = ["Answer", "Hit", "SearchService"]

Result = TypeVar("Result")

NO_OPTIONS = ResultOptions()
BY_VECTOR = Ranking()
DEDUP_OVERFETCH = 4
"""With dedup, results are fetched this many times over (and again as often as needed), so that
k remain after collapsing when they exist."""
DEDUP_MAX_FETCHED = 4096
"""Most results one deduplicated search compares (their pairwise cosines take 64 MB)."""


@dataclass(frozen=True)
class Scope:
    """What one search may return, all from one live snapshot (`state`): base items (every one
    when `base` is None) and live items with their vectors; `matched` counts both."""

    state: LiveState
    base: Allowed | None
    searches_base: bool
    live_ids: np.ndarray
    live_vectors: np.ndarray
    matched: int
    fusion: Fusion | None = None
    """Image items are scored by image and caption with these weights; `live_vectors` are fused rows."""


@dataclass(frozen=True)
class Answer:
    """A query's vector (with the forward passes that made it), its hits, and its batch's search
    time; how many items of the target passed the filter (all of them without one), and whether
    results go on past these."""

    query: QueryVector | None
    """None for a keyword search: nothing was embedded."""
    hits: list[Hit]
    search_s: float
    matched: int = 0
    more: bool = False


class SearchService:
    """Embeds queries with the bundle's model and searches the bundle's indices; thread-safe.

    Concurrent queries are micro-batched (clipsearch.search.pipeline). Exact (Flat) indices are searched
    as a resident matrix on the model's device, others with FAISS, on the GPU when `use_gpu`
    (clipsearch.index.searchers).
    """

    def __init__(self, encoder: ClipEncoder, bundle: Bundle, limits: QueryLimits | None = None,
                 use_gpu: bool = False, batching: Batching | None = None, filter_cache_size: int = 64,
                 live: LiveLog | None = None, rrf_k: int = DEFAULT_RRF_K,
                 devices: Sequence[torch.device] | None = None) -> None:
        """`devices`: where exact indices are held, split across them when several (default: the
        model's device; clipsearch.index.sharding)."""
        limits, batching = limits or QueryLimits(), batching or Batching()
        self.encoder, self.bundle, self.limits, self.rrf_k = encoder, bundle, limits, rrf_k
        self.collection = Collection(bundle, live)
        self.devices = list(devices or [encoder.device])
        searchers = {modality: searcher_for(index, bundle.manifest.modalities[modality].index.exact,
                                            self.devices, use_gpu, bundle.stores.get(modality),
                                            bundle.manifest.modalities[modality].index.params.get("rerank", 1))
                     for modality, index in bundle.indices.items()}
        self.fusion = bundle.fusion
        self.pipeline = QueryPipeline(encoder, searchers, batching,
                                      self._fused_searcher(searchers.get(Modality.IMAGE), use_gpu))
        self.uploads = UploadDecoder(encoder.prepare_image, encoder.image_size, limits.max_pixels,
                                     limits.decode_timeout_s)
        self.classifier = ZeroShotClassifier(encoder.model, self._embed_prompts, limits)
        self._patches: explain.PatchFeatures | None = None
        # Heatmaps take one extra image forward per item: their own batcher, so a burst of them
        # queues there and never ahead of searches in the model's batchers.
        self._heatmaps: MicroBatcher[tuple[torch.Tensor, np.ndarray], np.ndarray] = MicroBatcher(
            self._heatmap_batch, batching.max_batch, name="explain")
        # The base items each recent filter allows, per target. Entries are keyed by the number of
        # hidden base ids too (it only grows), so a delete makes a new entry, never a stale one.
        self._allowed: OrderedDict[tuple[Modality, str, int], Allowed] = OrderedDict()
        self._allowed_lock = threading.Lock()
        self._filter_cache_size = filter_cache_size

    @property
    def modalities(self) -> set[Modality]:
        return self.collection.modalities

    def _fused_searcher(self, image: Searcher | None, use_gpu: bool) -> Searcher | None:
        """The image items' fused rows (clipsearch.index.fusion), searched as the image index is, so that
        the items a filter allows serve both: held row for row like the exact index, or the
        bundle's fused index beside an approximate one (same ids, same kind of index)."""
        if self.fusion is None or image is None:
            return None
        fused_index = self.bundle.fused_index
        if fused_index is not None:
            return searcher_for(fused_index, False, self.devices, use_gpu)
        if not isinstance(image, ExactSearcher):
            raise BundleError("a fused bundle needs its exact image index searched as a resident matrix, and it did "
                              f"not fit on {', '.join(map(str, self.devices))}")
        ids = image.index.row_ids
        rows = self.collection.base_fused_rows(ids, image.index.vectors())
        try:
            return image.like(rows)
        except torch.OutOfMemoryError:
            raise BundleError(f"the fused rows of {len(ids)} images ({rows.nbytes / 2**30:.1f} GiB in fp32) do not "
                              f"fit on {', '.join(map(str, self.devices))}") from None

    def fusion_for(self, target: Modality, options: ResultOptions) -> Fusion | None:
        """The weights a search of `target` fuses image and caption with: the query's, else the
        bundle's; None for texts and for bundles without caption vectors."""
        if options.fusion is not None:
            if target is not Modality.IMAGE:
                raise InvalidQuery("fusion", "image and caption are fused in image results only; the target is text")
            if self.fusion is None:
                raise InvalidQuery("fusion", "this bundle stores no caption vectors; build it with --fuse to weigh "
                                             "images with their captions")
            return options.fusion
        return self.fusion if target is Modality.IMAGE else None

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
        self._heatmaps.close()

    def embed_text(self, text: str, field: str = "text") -> QueryVector:
        return self._text_vector(self._wait(self._submit_text(text, field), "the model"), text, field)

    def embed_image(self, data: bytes, field: str = "data") -> QueryVector:
        return self._image_vector(self._wait(self._submit_image(self.uploads.decode(data, field)), "the model"))

    def search_text(self, text: str, target: Modality, k: int, field: str = "text",
                    options: ResultOptions = NO_OPTIONS, ranking: Ranking = BY_VECTOR) -> Answer:
        """Embed `text` and search `target` for it, both in the batch of the text tower's next pass;
        or, by `ranking`, search its words (keyword) or do both and fuse the rankings (hybrid)."""
        self.check_target(target, k, options)
        check_ranking(ranking)
        scope = self.scope(target, options.filter, self.fusion_for(target, options))
        if ranking.mode is SearchMode.VECTOR:
            embedded = self._wait(self._submit_text(text, field, *self._base_search(scope, target, k, options)),
                                  "the model")
            return self._answer(self._text_vector(embedded, text, field), embedded, target, k, options, scope)
        check_text(text, field, self.limits)
        words = keywords.compile_query(text, field)
        if ranking.mode is SearchMode.KEYWORD:
            started = time.perf_counter()
            found = self._keyword_ranking(words, target, _fetch_size(k, options), options.filter, scope)
            fused = [Fused(int(item_id), float(score), {"keyword": rank})
                     for rank, (item_id, score) in enumerate(zip(found.ids, found.scores, strict=True), 1)]
            return self._ranked_answer(None, fused, time.perf_counter() - started, target, k, options, scope)
        depth = max(_fetch_size(k, options), HYBRID_DEPTH)
        embedding = self._submit_text(text, field, target if scope.searches_base else None, depth, scope.base,
                                      scope.fusion)
        started = time.perf_counter()
        by_words = self._keyword_ranking(words, target, depth, options.filter, scope)
        keyword_s = time.perf_counter() - started
        embedded = self._wait(embedding, "the model")
        query = self._text_vector(embedded, text, field)
        by_vector = _with_live(embedded.found if embedded.found is not None else TopK.empty(1), scope,
                               query.vector, depth)
        fused = fuse({"vector": RankedList(by_vector.ids[0], by_vector.scores[0]), "keyword": by_words},
                     ranking, self.rrf_k)
        return self._ranked_answer(query, fused, embedded.search_s + keyword_s, target, k, options, scope)

    def search_image(self, data: bytes, target: Modality, k: int, field: str = "data",
                     options: ResultOptions = NO_OPTIONS) -> Answer:
        """Decode and embed the image `data` and search `target` for it, batched like search_text."""
        self.check_target(target, k, options)
        scope = self.scope(target, options.filter, self.fusion_for(target, options))
        pixels = self.uploads.decode(data, field)
        embedded = self._wait(self._submit_image(pixels, *self._base_search(scope, target, k, options)), "the model")
        return self._answer(self._image_vector(embedded), embedded, target, k, options, scope)

    def embed_texts(self, texts: Sequence[str], fields: Sequence[str], background: bool = False) -> list[np.ndarray]:
        """Unit vectors (float32 (d,)) of several texts, all submitted to the text tower before any
        is awaited; `background` ones (writes) queue behind every query."""
        futures = [self._submit_text(text, field, background=background)
                   for text, field in zip(texts, fields, strict=True)]
        return [self._wait(future, "the model").vector for future in futures]

    def embed_images(self, images: Sequence[bytes], fields: Sequence[str],
                     background: bool = False) -> list[np.ndarray]:
        """Unit vectors of several image files, decoded and embedded side by side (`background` as embed_texts)."""
        decodings = [self.uploads.submit(data) for data in images]
        futures = [self._submit_image(self.uploads.result(decoding, field), background=background)
                   for decoding, field in zip(decodings, fields, strict=True)]
        return [self._wait(future, "the model").vector for future in futures]

    def embed_terms(self, terms: Sequence[Term], field: str = "terms") -> QueryVector:
        """The weighted sum of the terms' unit embeddings, renormalised to unit length.

        Every term is submitted (texts to their tower, images to the decoders) before any is
        waited on, so the terms of one query are embedded side by side.
        """
        check_terms(terms, field, self.limits)
        live = [(number, term) for number, term in enumerate(terms) if term.weight != 0]
        texts = {number: self._submit_text(term.text, f"{field}[{number}].text")
                 for number, term in live if isinstance(term, TextTerm)}
        decodings = {number: self.uploads.submit(term.data) for number, term in live if isinstance(term, ImageTerm)}
        images = {number: self._submit_image(self.uploads.result(decoding, f"{field}[{number}].data"))
                  for number, decoding in decodings.items()}
        parts = []
        for number, term in live:
            name = f"{field}[{number}]"
            if isinstance(term, TextTerm):
                part = self._text_vector(self._wait(texts[number], "the model"), term.text, f"{name}.text")
            elif isinstance(term, ImageTerm):
                part = self._image_vector(self._wait(images[number], "the model"))
            else:
                part = QueryVector(self.collection.stored_vector(term.item_id, f"{name}.item_id"))
            parts.append((term.weight, part))
        return weighted_sum(parts, field)

    def search(self, query: np.ndarray, target: Modality, k: int) -> list[Hit]:
        """The k items of `target` modality most similar to `query` (float32 (d,)), best first."""
        return self.search_vector(QueryVector(query), target, k).hits

    def search_vector(self, query: QueryVector, target: Modality, k: int,
                      options: ResultOptions = NO_OPTIONS) -> Answer:
        self.check_target(target, k, options)
        scope = self.scope(target, options.filter, self.fusion_for(target, options))
        found, search_s = self._search_scope(query.vector, target, _fetch_size(k, options), scope)
        return self._page(query, found, search_s, target, k, options, scope)

    def scope(self, target: Modality, filter: Filter | None, fusion: Fusion | None = None) -> Scope:
        """What a search of `target` may return under `filter`, from the live log's latest snapshot;
        with `fusion`, live image items as fused rows."""
        state = self.collection.refresh()
        removed = state.removed_of(target)
        base_count = self.collection.base_count(target) - len(removed)
        base = None
        if base_count > 0 and (filter is not None or len(removed)):
            base = self._base_allowed(target, filter, removed)
            base_count = len(base)
        segment = state.segment(target)
        live_ids, live_vectors = segment.ids, segment.fused_rows() if fusion is not None else segment.vectors
        if filter is not None and len(live_ids):
            live_ids = state.matching_ids(target, filter)
            live_vectors = live_vectors[np.searchsorted(segment.ids, live_ids)]
        return Scope(state, base, base_count > 0, live_ids, live_vectors, base_count + len(live_ids), fusion)

    def _base_allowed(self, target: Modality, filter: Filter | None, removed: np.ndarray) -> Allowed:
        """The base items of `target` that pass `filter` and are not hidden, prepared for the base's
        searcher; cached. Hidden ids only ever grow in number, so their count versions the entry."""
        key = (target, "" if filter is None else filter.canonical, len(removed))
        with self._allowed_lock:
            if key in self._allowed:
                self._allowed.move_to_end(key)
                return self._allowed[key]
        searcher = self.pipeline.searchers[target]
        if filter is None:
            made = searcher.allow_all_but(removed, self.bundle.base_ids(target))
        else:
            ids = self.bundle.items.matching_ids(target, filter.sql, filter.params)
            made = searcher.allow(np.setdiff1d(ids, removed, assume_unique=True) if len(removed) else ids)
        with self._allowed_lock:
            self._allowed[key] = made
            while len(self._allowed) > self._filter_cache_size:
                self._allowed.popitem(last=False)
        return made

    def search_many(self, queries: np.ndarray, target: Modality, k: int) -> list[list[Hit]]:
        """Top-k for each row of `queries` (float32 (n, d)); scores are cosine similarities."""
        self.check_target(target, k)
        futures = [self.pipeline.search(query, target, k) for query in queries]
        return self.collection.hits([self._wait(future, "the search").found for future in futures])

    def classify(self, image_vector: np.ndarray, labels: Sequence[str], templates: Sequence[str] | None = None,
                 multi_label: bool = False) -> list[LabelScore]:
        """Zero-shot labels for one unit image embedding, best first (clipsearch.model.zero_shot)."""
        return self.classifier.classify(image_vector[None, :], labels, templates, multi_label)[0]

    def image_item_vector(self, item_id: int, field: str = "item_id") -> np.ndarray:
        """The stored vector of an image item; a text item is refused, naming `field`."""
        item = self.collection.item(item_id, field)
        if item.modality is not Modality.IMAGE:
            raise InvalidQuery(field, f"item {item_id} is a {item.modality.value}, not an image")
        return self.collection.stored_vector(item_id, field)

    def term_shares(self, query: QueryVector, hits: Sequence[Hit], fusion: Fusion | None = None) -> np.ndarray:
        """Each term's share of each hit's score, float64 (hits, terms): see clipsearch.search.explain. With
        `fusion` (the search's), shares of the fused score: each term's part against image and caption."""
        parts = query.parts or (WeightedPart(1.0, query.vector, 1.0),)
        if not hits:
            return np.zeros((0, len(parts)))
        vectors = np.stack([self.collection.stored_vector(hit.item.id) for hit in hits])
        if fusion is not None:
            captions = [self.collection.caption_vector(hit.item.id) for hit in hits]
            vectors = fused_rows(vectors, np.stack([vector if vector is not None else np.zeros_like(vectors[0])
                                                    for vector in captions]),
                                 np.array([vector is not None for vector in captions]))
            parts = tuple(replace(part, vector=fusion.expand(part.vector[None])[0]) for part in parts)
        return explain.term_shares(parts, vectors)

    def heatmaps(self, query: QueryVector, item_ids: Sequence[int], field: str = "item_ids") -> list[explain.Heatmap]:
        """Where in each image item the query lights up, one patch grid per item (clipsearch.search.explain)."""
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
        grids = [self._wait(future, "the model") for future in futures]
        return [explain.Heatmap(grid, view.permute(1, 2, 0).numpy(), self._patches.method)
                for grid, view in zip(grids, views, strict=True)]

    def check_target(self, target: Modality, k: int, options: ResultOptions = NO_OPTIONS) -> None:
        """Refuse a k or options out of range or a target modality the bundle lacks, before any work is done."""
        check_k(k, self.limits)
        check_options(options, self.limits)
        if target not in self.modalities:
            present = ", ".join(sorted(self.modalities)) or "none"
            raise ModalityUnavailable("target", f"the bundle has no {target.value} items (it has: {present})")

    def _submit_text(self, text: str, field: str, target: Modality | None = None, k: int = 0,
                     allowed: Allowed | None = None, fusion: Fusion | None = None,
                     background: bool = False) -> Future[Embedded]:
        check_text(text, field, self.limits)
        return self.pipeline.embed(Modality.TEXT, Pending(text, target, k, allowed, fusion), background)

    def _submit_image(self, pixels: torch.Tensor, target: Modality | None = None, k: int = 0,
                      allowed: Allowed | None = None, fusion: Fusion | None = None,
                      background: bool = False) -> Future[Embedded]:
        return self.pipeline.embed(Modality.IMAGE, Pending(pixels, target, k, allowed, fusion), background)

    def _text_vector(self, embedded: Embedded, text: str, field: str) -> QueryVector:
        truncated = (field,) if self.encoder.is_truncated(text) else ()
        return QueryVector(embedded.vector, truncated, (Encoding(Modality.TEXT, embedded.encode_s),))

    def _image_vector(self, embedded: Embedded) -> QueryVector:
        return QueryVector(embedded.vector, (), (Encoding(Modality.IMAGE, embedded.encode_s),))

    def _base_search(self, scope: Scope, target: Modality, k: int,
                     options: ResultOptions) -> tuple[Modality | None, int, Allowed | None, Fusion | None]:
        """Where the fused encode-and-search step searches the base: nowhere when it holds nothing allowed."""
        return (target if scope.searches_base else None), _fetch_size(k, options), scope.base, scope.fusion

    def _search_scope(self, vector: np.ndarray, target: Modality, fetch: int, scope: Scope) -> tuple[TopK, float]:
        """The top `fetch` of the base (through the search batcher) and the live items together."""
        found, search_s = TopK.empty(1), 0.0
        if scope.searches_base:
            searched = self._wait(self.pipeline.search(vector, target, fetch, scope.base, scope.fusion), "the search")
            found, search_s = searched.found, searched.search_s
        return _with_live(found, scope, vector, fetch), search_s

    def _answer(self, query: QueryVector, embedded: Embedded, target: Modality, k: int, options: ResultOptions,
                scope: Scope) -> Answer:
        base = embedded.found if embedded.found is not None else TopK.empty(1)
        found = _with_live(base, scope, query.vector, _fetch_size(k, options))
        return self._page(query, found, embedded.search_s, target, k, options, scope)

    def _page(self, query: QueryVector, found: TopK, search_s: float, target: Modality, k: int,
              options: ResultOptions, scope: Scope) -> Answer:
        """The k hits after `options.offset` of a search that fetched `found`, duplicates collapsed
        (searching again, deeper, while too few groups remain and more items exist)."""
        matched = scope.matched
        hits = self.collection.hits([found], scope.state)[0]
        if options.dedup is not None:
            wanted, fetched = _fetch_size(k, ResultOptions(offset=options.offset)), found.ids.shape[1]
            groups = self._collapse(hits, target, options.dedup, scope)
            # A search that gave fewer hits than it fetched has given every hit it can.
            while len(groups) < wanted and len(hits) == fetched < min(matched, DEDUP_MAX_FETCHED):
                fetched = min(matched, DEDUP_MAX_FETCHED, fetched * DEDUP_OVERFETCH)
                deeper, seconds = self._search_scope(query.vector, target, fetched, scope)
                search_s += seconds
                hits = self.collection.hits([deeper], scope.state)[0]
                groups = self._collapse(hits, target, options.dedup, scope)
            hits = [replace(hits[group[0]], duplicates=tuple(hits[member].item.id for member in group[1:]))
                    for group in groups]
        shown = self._with_fused_parts(query.vector, hits[options.offset:options.offset + k], scope)
        return Answer(query, shown, search_s, matched, more=len(hits) > options.offset + k)

    def _with_fused_parts(self, query: np.ndarray, hits: list[Hit], scope: Scope) -> list[Hit]:
        """Hits of a fused search, each with what its image and its caption add to its score."""
        if scope.fusion is None or not hits:
            return hits
        ids = np.array([hit.item.id for hit in hits], dtype=np.int64)
        images = self.collection.stored_vectors(Modality.IMAGE, ids, scope.state)
        return [replace(hit, fused=scope.fusion.parts(query, image, self.collection.caption_vector(hit.item.id,
                                                                                                   scope.state)))
                for hit, image in zip(hits, images, strict=True)]

    def _keyword_ranking(self, words: keywords.KeywordQuery, target: Modality, depth: int, filter: Filter | None,
                         scope: Scope) -> RankedList:
        """The best `depth` items of `target` in `scope` for a keyword query: the base's (hidden ones
        left out) and the snapshot's live items', merged by score."""
        removed = scope.state.removed_of(target)
        condition, params = ("1", ()) if filter is None else (filter.sql, filter.params)
        base_ids, base_scores = self.bundle.items.keyword_search(words, target, condition, params,
                                                                 depth + len(removed))
        kept = ~np.isin(base_ids, removed)
        base = RankedList(base_ids[kept][:depth], base_scores[kept][:depth])
        live = RankedList.empty()
        if len(scope.live_ids):
            live = RankedList(*scope.state.keyword_search(words, target, self.bundle.manifest.keyword_fields,
                                                          filter, depth))
        return merge_ranked(base, live, depth)

    def _ranked_answer(self, query: QueryVector | None, fused: list[Fused], search_s: float, target: Modality,
                       k: int, options: ResultOptions, scope: Scope) -> Answer:
        """The k hits after `options.offset` of a keyword or hybrid ranking, near-duplicates collapsed
        among the candidates fetched."""
        items = self.collection.hits([TopK(np.array([[result.score for result in fused]], np.float32),
                                           np.array([[result.item_id for result in fused]], np.int64))],
                                     scope.state)[0]
        ranks = {result.item_id: result.ranks for result in fused}
        hits = [replace(hit, ranks=ranks[hit.item.id]) for hit in items]
        if options.dedup is not None and hits:
            hits = [replace(hits[group[0]], duplicates=tuple(hits[member].item.id for member in group[1:]))
                    for group in self._collapse(hits, target, options.dedup, scope)]
        shown = hits[options.offset:options.offset + k]
        if query is not None:
            shown = self._with_fused_parts(query.vector, shown, scope)
        return Answer(query, shown, search_s, scope.matched, more=len(hits) > options.offset + k)

    def _collapse(self, hits: list[Hit], target: Modality, threshold: float, scope: Scope) -> list[list[int]]:
        ids = np.array([hit.item.id for hit in hits], dtype=np.int64)
        return dedup.collapse(self.collection.stored_vectors(target, ids, scope.state), threshold)

    def _embed_prompts(self, prompts: list[str]) -> np.ndarray:
        """Unit embeddings of label prompts, through the text tower's batcher like any query."""
        futures = [self._submit_text(prompt, "labels") for prompt in prompts]
        return np.stack([self._wait(future, "the model").vector for future in futures])

    def _heatmap_batch(self, batch: list[tuple[torch.Tensor, np.ndarray]]) -> list[np.ndarray]:
        assert self._patches is not None  # set before anything is submitted
        patches = self._patches(self.encoder.model_input(torch.stack([view for view, _ in batch])))
        return [explain.similarity_grids(patches[number:number + 1], query)[0]
                for number, (_, query) in enumerate(batch)]

    def _wait(self, future: Future[Result], waiting_for: str) -> Result:
        try:
            return future.result(timeout=self.limits.encode_timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: the batcher drops it; already running: it finishes unused
            raise ServiceBusy(f"{waiting_for} did not finish within {self.limits.encode_timeout_s:g} s; "
                              "the server is overloaded, try again") from None


def _with_live(found: TopK, scope: Scope, query: np.ndarray, k: int) -> TopK:
    """One row of base results merged with the live items in `scope`, best first, at most k."""
    if not len(scope.live_ids):
        return found
    if scope.fusion is not None:
        query = scope.fusion.expand(query[None])[0]
    valid = found.ids[0] >= 0
    scores = np.concatenate([found.scores[0][valid], scope.live_vectors @ query])
    ids = np.concatenate([found.ids[0][valid], scope.live_ids])
    order = np.argsort(-scores, kind="stable")[:k]
    return TopK(scores[order][None].astype(np.float32), ids[order][None])


def _fetch_size(k: int, options: ResultOptions) -> int:
    """How many results to fetch for k after `options.offset`: one more than shown, which tells
    whether a next page exists, and with dedup DEDUP_OVERFETCH times that."""
    wanted = options.offset + k + 1
    return max(wanted, min(wanted * DEDUP_OVERFETCH, DEDUP_MAX_FETCHED)) if options.dedup is not None else wanted

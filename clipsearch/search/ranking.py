"""Text searches ranked by keyword, or by keyword and vector fused (hybrid; clipsearch.search.hybrid).

A keyword ranking merges the base's BM25 ranking (hidden items left out) with the live items' own,
by score. A hybrid search embeds the text and searches by vector in the model's batch while the
keyword ranking runs, both to the same depth, then fuses the two rankings.
"""

from __future__ import annotations

import time

import numpy as np

from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.search.embedding import QueryEmbedder
from clipsearch.search.hybrid import HYBRID_DEPTH, Fused, RankedList, Ranking, SearchMode, fuse, merge_ranked
from clipsearch.search.query import ResultOptions, check_text
from clipsearch.search.results import Answer, Pager, cutoff_depth, fetch_size
from clipsearch.search.scope import Scope, best_per_item, with_live
from clipsearch.search.sounds import SoundQueries
from clipsearch.search.vectors import VectorSearch
from clipsearch.store import keywords
from clipsearch.store.bundle import Bundle
from clipsearch.store.filters import Filter


class WordSearch:
    """Keyword and hybrid text searches over one bundle and its live items."""

    def __init__(self, bundle: Bundle, embedder: QueryEmbedder, vectors: VectorSearch, rrf_k: int,
                 sounds: SoundQueries | None = None) -> None:
        """`sounds` embeds the texts of hybrid searches of sounds, in the audio model's space."""
        self.bundle, self.embedder, self.vectors, self.rrf_k, self.sounds = bundle, embedder, vectors, rrf_k, sounds
        self.pager: Pager = vectors.pager

    def __call__(self, text: str, field: str, target: Modality, k: int, options: ResultOptions, ranking: Ranking,
                 scope: Scope) -> Answer:
        check_text(text, field, self.embedder.limits)
        words = keywords.compile_query(text, field)
        # A cut-off sees every candidate that passes it (up to the most it may gather, and one more).
        fetch = cutoff_depth(k, options, self.pager.max_cutoff) if options.cut_off else fetch_size(k, options)
        if ranking.mode is SearchMode.KEYWORD:
            started = time.perf_counter()
            found = self.ranking(words, target, fetch, options.filter, scope)
            fused = [Fused(int(item_id), float(score), {"keyword": rank})
                     for rank, (item_id, score) in enumerate(zip(found.ids, found.scores, strict=True), 1)]
            return self.pager.ranked(None, fused, time.perf_counter() - started, target, k, options, scope)
        depth = max(fetch, HYBRID_DEPTH)
        if target.own_space and self.sounds is not None:
            return self._hybrid_sounds(text, field, words, target, k, depth, options, ranking, scope)
        embedding = self.embedder.submit_text(text, field, target if scope.searches_base else None, depth,
                                              scope.base, scope.fusion)
        started = time.perf_counter()
        by_words = self.ranking(words, target, depth, options.filter, scope)
        keyword_s = time.perf_counter() - started
        embedded = self.embedder.wait(embedding)
        query = self.embedder.text_vector(embedded, text, field)
        by_vector = with_live(embedded.found if embedded.found is not None else TopK.empty(1), scope,
                              query.vector, depth)
        if target.timed:
            by_vector = best_per_item(by_vector)
        fused = fuse({"vector": RankedList(by_vector.ids[0], by_vector.scores[0]), "keyword": by_words},
                     ranking, self.rrf_k)
        return self.pager.ranked(query, fused, embedded.search_s + keyword_s, target, k, options, scope)

    def _hybrid_sounds(self, text: str, field: str, words: keywords.KeywordQuery, target: Modality, k: int,
                       depth: int, options: ResultOptions, ranking: Ranking, scope: Scope) -> Answer:
        """A hybrid search of sounds: the text embedded by the audio model's own text tower."""
        assert self.sounds is not None
        query = self.sounds.text(text, field)
        by_vector, search_s = self.vectors.deeper(query.vector, target, depth, scope)
        started = time.perf_counter()
        by_words = self.ranking(words, target, depth, options.filter, scope)
        fused = fuse({"vector": RankedList(by_vector.ids[0], by_vector.scores[0]), "keyword": by_words},
                     ranking, self.rrf_k)
        return self.pager.ranked(query, fused, search_s + time.perf_counter() - started, target, k, options, scope)

    def ranking(self, words: keywords.KeywordQuery, target: Modality, depth: int, filter: Filter | None,
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

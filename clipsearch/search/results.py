"""A search's answer: the page of hits after an offset, near-duplicates collapsed, fused scores split.

A search fetches one result more than it shows (that one says whether a next page exists); with
dedup it fetches DEDUP_OVERFETCH times that, and searches again deeper while too few groups remain.
With a cut-off (min_score, order_by) it gathers every hit that passes, searching again deeper
while the deepest hit fetched still passes (clipsearch.search.cutoff).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.search import dedup
from clipsearch.search.cutoff import CUTOFF_FIRST_FETCH, order_positions, ordered, too_many
from clipsearch.search.hybrid import Fused
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.scope import Scope
from clipsearch.store import segments
from clipsearch.store.collection import Collection, Hit
from clipsearch.store.ocr_text import matching_lines, query_words

DEDUP_OVERFETCH = 4
"""With dedup, results are fetched this many times over (and again as often as needed), so that
k remain after collapsing when they exist."""
MOMENTS = 5
"""Best segments listed with each video hit."""
DEDUP_MAX_FETCHED = 4096
"""Most results one deduplicated search compares (their pairwise cosines take 64 MB)."""

Deeper = Callable[[np.ndarray, Modality, int, Scope], tuple[TopK, float]]
"""Search `scope` again for the top `fetch` of a query vector: (results, seconds)."""


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
    """With a cut-off, how many of those also passed it."""
    more: bool = False


def fetch_size(k: int, options: ResultOptions) -> int:
    """How many results to fetch for k after `options.offset`: one more than shown, which tells
    whether a next page exists; with dedup DEDUP_OVERFETCH times that; with a cut-off, at least
    CUTOFF_FIRST_FETCH."""
    wanted = options.offset + k + 1
    if options.cut_off:
        return max(wanted, CUTOFF_FIRST_FETCH)
    return max(wanted, min(wanted * DEDUP_OVERFETCH, DEDUP_MAX_FETCHED)) if options.dedup is not None else wanted


def cutoff_depth(k: int, options: ResultOptions, max_cutoff: int) -> int:
    """How deep a ranking with a cut-off is taken at once: one more than it may gather, which tells
    whether more pass than that (a vector search starts at fetch_size and goes deeper as needed)."""
    return max(fetch_size(k, options), max_cutoff + 1)


class Pager:
    """Turns what a search found into the answer its options ask for; a cut-off gathers at most
    `max_cutoff` hits."""

    def __init__(self, collection: Collection, deeper: Deeper, max_cutoff: int) -> None:
        self.collection, self.deeper, self.max_cutoff = collection, deeper, max_cutoff

    def page(self, query: QueryVector, found: TopK, search_s: float, target: Modality, k: int,
             options: ResultOptions, scope: Scope) -> Answer:
        """The k hits after `options.offset` of a search that fetched `found`, duplicates collapsed
        (searching again, deeper, while too few groups remain and more items exist)."""
        if options.cut_off:
            return self._cut_off(query, found, search_s, target, k, options, scope)
        matched = scope.matched
        hits = self.collection.hits([found], scope.state, of_segments=options.by_segments)[0]
        if options.dedup is not None:
            wanted, fetched = fetch_size(k, ResultOptions(offset=options.offset)), found.ids.shape[1]
            groups = self._collapse(hits, target, options.dedup, scope)
            # A search that gave fewer hits than it fetched has given every hit it can.
            while len(groups) < wanted and len(hits) == fetched < min(matched, DEDUP_MAX_FETCHED):
                fetched = min(matched, DEDUP_MAX_FETCHED, fetched * DEDUP_OVERFETCH)
                deeper, seconds = self.deeper(query.vector, target, fetched, scope)
                search_s += seconds
                hits = self.collection.hits([deeper], scope.state)[0]
                groups = self._collapse(hits, target, options.dedup, scope)
            hits = _grouped(hits, groups)
        shown = self._shown(query.vector, hits[options.offset:options.offset + k], scope)
        return Answer(query, shown, search_s, matched, more=len(hits) > options.offset + k)

    def ranked(self, query: QueryVector | None, fused: list[Fused], search_s: float, target: Modality, k: int,
               options: ResultOptions, scope: Scope) -> Answer:
        """The k hits after `options.offset` of a keyword or hybrid ranking, near-duplicates collapsed
        among the candidates fetched; with a cut-off, the candidates that pass it (taken to
        cutoff_depth), sorted as it says."""
        matched = scope.matched
        if options.min_score is not None:
            fused = [result for result in fused if result.score >= options.min_score]
        if options.cut_off:
            if len(fused) > self.max_cutoff:
                raise too_many(len(fused), self.max_cutoff, options.min_score)
            matched = len(fused)
        ranking = TopK(np.array([[result.score for result in fused]], np.float32),
                       np.array([[result.item_id for result in fused]], np.int64))
        ranks = {result.item_id: result.ranks for result in fused}
        if options.dedup is None:
            shown, more = self._page(ranking, options, k, scope), len(fused) > options.offset + k
        else:
            hits = self.collection.hits([ranking], scope.state)[0]
            if hits:
                hits = _grouped(hits, self._collapse(hits, target, options.dedup, scope))
            if options.order_by is not None:
                hits = ordered(hits, options.order_by)
            shown, more = hits[options.offset:options.offset + k], len(hits) > options.offset + k
        shown = [replace(hit, ranks=ranks[hit.item.id]) for hit in shown]
        if query is not None:
            shown = self._shown(query.vector, shown, scope)
        return Answer(query, shown, search_s, matched, more=more)

    def _cut_off(self, query: QueryVector, found: TopK, search_s: float, target: Modality, k: int,
                 options: ResultOptions, scope: Scope) -> Answer:
        """Every hit that passes the cut-off (searching again, deeper, while the deepest one fetched
        passes and more items exist: once more, as deep as it may gather), near-duplicates collapsed
        among them, sorted, then paged."""
        floor = -np.inf if options.min_score is None else options.min_score
        if options.min_score is None and scope.matched > self.max_cutoff:
            raise too_many(scope.matched, self.max_cutoff, None)
        fetched = found.ids.shape[1]
        while True:
            scores = found.scores[0][found.ids[0] >= 0]
            # Fewer than fetched: the search gave every hit it can; a score below the floor: the rest are lower.
            if len(scores) < fetched or len(scores) >= scope.matched or scores[-1] < floor:
                break
            if fetched > self.max_cutoff:
                raise too_many(fetched, self.max_cutoff, options.min_score)
            fetched = min(scope.matched, self.max_cutoff + 1)
            found, seconds = self.deeper(query.vector, target, fetched, scope)
            search_s += seconds
        passing = (found.scores[0] >= floor) & (found.ids[0] >= 0)
        matched = int(passing.sum())
        if matched > self.max_cutoff:
            raise too_many(matched, self.max_cutoff, options.min_score)
        kept = TopK(found.scores[:, passing], found.ids[:, passing])
        if options.dedup is None:
            return Answer(query, self._shown(query.vector, self._page(kept, options, k, scope), scope),
                          search_s, matched, more=matched > options.offset + k)
        hits = self.collection.hits([kept], scope.state)[0]
        if hits:
            hits = _grouped(hits, self._collapse(hits, target, options.dedup, scope))
        if options.order_by is not None:
            hits = ordered(hits, options.order_by)
        shown = self._shown(query.vector, hits[options.offset:options.offset + k], scope)
        return Answer(query, shown, search_s, matched, more=len(hits) > options.offset + k)

    def _page(self, ranking: TopK, options: ResultOptions, k: int, scope: Scope) -> list[Hit]:
        """The hits after `options.offset` of a one-row `ranking` (best first), or of it sorted by
        `options.order_by`: only the page's items are looked up (an order reads only its key of the rest)."""
        positions = np.arange(ranking.ids.shape[1])
        if options.order_by is not None:
            values = self.collection.sort_values(ranking.ids[0].tolist(), options.order_by.key, scope.state)
            positions = np.array(order_positions(values, options.order_by.descending), dtype=np.int64)
        rows = positions[options.offset:options.offset + k]
        return self.collection.hits([TopK(ranking.scores[:, rows], ranking.ids[:, rows])], scope.state,
                                    of_segments=options.by_segments)[0]

    def _shown(self, query: np.ndarray, hits: list[Hit], scope: Scope) -> list[Hit]:
        """The hits shown, with what a fused search's image and each of its texts add to each score,
        and each video item's best moments."""
        hits = [self._with_moments(query, hit, scope) if hit.item.modality.timed and hit.segment is None
                else hit for hit in hits]
        wanting = [hit for hit in hits if hit.fused is None]  # a video's parts came with its moments
        if scope.fusion is None or not wanting:
            return hits
        if wanting[0].item.modality.timed:  # each moment of a video (group_by segments): its segment's part
            scored = np.stack([self.collection.scored_vector(hit, scope.state) for hit in wanting])
        else:
            scored = self.collection.stored_vectors(Modality.IMAGE, np.array([hit.item.id for hit in wanting]),
                                                    scope.state)
        parts = iter([scope.fusion.parts(query, vector, self.collection.text_vectors(hit.item.id, scope.state))
                      for hit, vector in zip(wanting, scored, strict=True)])
        return [replace(hit, fused=next(parts)) if hit.fused is None else hit for hit in hits]

    def _with_moments(self, query: np.ndarray, hit: Hit, scope: Scope) -> Hit:
        """A video hit with the segment that scores it best, and its MOMENTS best segments with their
        scores, in time order (the strip a page shows under the video); fused, what that segment and
        the video's caption add (its segments and texts read once for both)."""
        ids, vectors = self.collection.segment_vectors(hit.item.id, scope.state)
        if not len(ids):
            return hit
        texts = {} if scope.fusion is None else self.collection.text_vectors(hit.item.id, scope.state)
        # Fused, each moment is scored with its video's caption, as the search scored it.
        scores = vectors @ query if scope.fusion is None else scope.fusion.scores(query, vectors, texts)
        best = np.argsort(-scores, kind="stable")[:MOMENTS]
        spans = [segments.span_of(hit.item.extra, int(ids[row]), hit.item.modality) for row in sorted(best.tolist())]
        moments = tuple((span, float(scores[span.position])) for span in spans if span is not None)
        best_span = segments.span_of(hit.item.extra, int(ids[best[0]]), hit.item.modality)
        fused = None if scope.fusion is None else scope.fusion.parts(query, vectors[best[0]], texts)
        return replace(hit, segment=best_span, moments=moments, fused=fused)

    def _collapse(self, hits: list[Hit], target: Modality, threshold: float, scope: Scope) -> list[list[int]]:
        ids = np.array([hit.item.id for hit in hits], dtype=np.int64)
        return dedup.collapse(self.collection.stored_vectors(target, ids, scope.state), threshold)


def with_ocr_matches(answer: Answer, text: str) -> Answer:
    """The answer's image hits each with the lines read from it that hold the words of `text`."""
    words = query_words(text)
    if not words:
        return answer
    hits = [replace(hit, ocr_matches=tuple(matches)) if (matches := matching_lines(hit.item.extra, words)) else hit
            for hit in answer.hits]
    return replace(answer, hits=hits)


def _grouped(hits: list[Hit], groups: list[list[int]]) -> list[Hit]:
    """The best-ranked hit of each group, listing the ids it absorbed."""
    return [replace(hits[group[0]], duplicates=tuple(hits[member].item.id for member in group[1:]))
            for group in groups]

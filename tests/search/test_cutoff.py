"""A relevance cut-off (min_score) and an order by metadata (order_by): the rules by themselves, then
through the search service against brute force over the same bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipsearch.config import QueryLimits
from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search import results
from clipsearch.search.cutoff import OrderBy, ordered
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.open import opened_service
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, TextEntry
from clipsearch.store.bundle import Bundle
from clipsearch.store.collection import Hit
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import Item
from tests.support.corpora import private_copy
from tests.support.reference import stored_vectors


def _hit(item_id: int, score: float, **extra: Any) -> Hit:
    return Hit(Item(item_id, Modality.IMAGE, f"/photos/{item_id}.jpg", f"caption {item_id}", extra, ""), score)


def _ids(hits: list[Hit]) -> list[int]:
    return [hit.item.id for hit in hits]


# The rules


@pytest.mark.parametrize(("raw", "field", "reason"), [
    ("taken_at", "order_by", "must be an object"),
    ({"direction": "asc"}, "order_by.key", "non-empty string"),
    ({"key": "  "}, "order_by.key", "non-empty string"),
    ({"key": "a..b"}, "order_by.key", "empty parts"),
    ({"key": 'a."b'}, "order_by.key", "must not contain"),
    ({"key": "x" * 300}, "order_by.key", "at most 256"),
    ({"key": "year", "direction": "up"}, "order_by.direction", "'asc' or 'desc'"),
    ({"key": "year", "nulls": "first"}, "order_by.nulls", "unknown field"),
])
def test_a_bad_order_is_refused_naming_its_part(raw: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        OrderBy.of(raw)
    assert refused.value.field == field and reason in refused.value.reason


def test_an_order_is_descending_unless_asked_otherwise() -> None:
    assert OrderBy.of({"key": "year"}) == OrderBy("year", descending=True)
    assert OrderBy.of({"key": "year", "direction": "asc"}) == OrderBy("year", descending=False)


def test_numbers_sort_before_strings_and_items_without_a_value_come_last_either_way() -> None:
    hits = [_hit(1, 0.9, year=2020), _hit(2, 0.8), _hit(3, 0.7, year="unknown"), _hit(4, 0.6, year=2023),
            _hit(5, 0.5, year=[2020, 2021]), _hit(6, 0.4, year=2021.5), _hit(7, 0.3, year=True)]
    assert _ids(ordered(hits, OrderBy("year", descending=True))) == [4, 6, 1, 7, 3, 2, 5]
    assert _ids(ordered(hits, OrderBy("year", descending=False))) == [7, 1, 6, 4, 3, 2, 5]


def test_ties_keep_their_score_order_in_both_directions() -> None:
    hits = [_hit(1, 0.9, day="mon"), _hit(2, 0.8, day="tue"), _hit(3, 0.7, day="mon"), _hit(4, 0.6, day="tue")]
    assert _ids(ordered(hits, OrderBy("day", descending=False))) == [1, 3, 2, 4]
    assert _ids(ordered(hits, OrderBy("day", descending=True))) == [2, 4, 1, 3]


# Through the search service


@pytest.fixture()
def deep(encoder: ClipEncoder, bundle: Bundle) -> Iterator[SearchService]:
    """A service that gathers at most 12 hits for a cut-off: the 30 images can pass more."""
    opened = SearchService(encoder, bundle, QueryLimits(max_k=20, max_offset=50, max_cutoff_results=12))
    yield opened
    opened.close()


def _scores_by_brute_force(bundle: Bundle, query: np.ndarray) -> list[tuple[float, int]]:
    ids, vectors = stored_vectors(bundle, Modality.IMAGE)
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    return sorted(zip(scores.tolist(), ids.tolist(), strict=True), key=lambda pair: -pair[0])


def _threshold_passing(ranked: list[tuple[float, int]], count: int) -> float:
    """A score between the count-th and the next, so that exactly `count` items pass it."""
    return (ranked[count - 1][0] + ranked[count][0]) / 2


@pytest.mark.parametrize("first_fetch", [1024, 3])
def test_min_score_returns_exactly_the_items_scoring_above_it_and_counts_them(deep: SearchService, bundle: Bundle,
                                                                             first_fetch: int,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # At 3 the first search finds too few (the 30 pictures all fit in the usual 1024): it must go deeper.
    monkeypatch.setattr(results, "CUTOFF_FIRST_FETCH", first_fetch)
    query = deep.embed_text("a photo of noise")
    ranked = _scores_by_brute_force(bundle, query.vector)
    floor = _threshold_passing(ranked, 9)
    pages = [deep.search_vector(query, Modality.IMAGE, 2, ResultOptions(offset=offset, min_score=floor))
             for offset in range(0, 10, 2)]
    assert [answer.matched for answer in pages] == [9] * 5
    assert [answer.more for answer in pages] == [True, True, True, True, False]
    assert [hit.item.id for answer in pages for hit in answer.hits] == [item_id for _, item_id in ranked[:9]]
    assert all(hit.score >= floor for answer in pages for hit in answer.hits)


def test_a_min_score_nothing_reaches_finds_nothing(deep: SearchService) -> None:
    answer = deep.search_vector(deep.embed_text("x"), Modality.IMAGE, 5, ResultOptions(min_score=1.5))
    assert answer.hits == [] and answer.matched == 0 and not answer.more


@pytest.mark.parametrize("first_fetch", [1024, 3])
def test_a_min_score_too_many_items_reach_is_refused_rather_than_half_counted(
        deep: SearchService, first_fetch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "CUTOFF_FIRST_FETCH", first_fetch)
    with pytest.raises(InvalidQuery) as refused:
        deep.search_vector(deep.embed_text("x"), Modality.IMAGE, 5, ResultOptions(min_score=-1.0))
    assert refused.value.field == "min_score" and "more than 12" in refused.value.reason


def test_an_order_without_min_score_sorts_everything_the_filter_passes(deep: SearchService, bundle: Bundle) -> None:
    numbered = parse_filter({"key": "number", "exists": True})  # every third picture: ten
    answer = deep.search_text("a photo", Modality.IMAGE, 20,
                              options=ResultOptions(filter=numbered, order_by=OrderBy("number", descending=False)))
    assert [hit.item.extra["number"] for hit in answer.hits] == list(range(0, 30, 3))
    assert answer.matched == 10 and not answer.more


def test_an_order_of_more_items_than_may_be_gathered_asks_for_a_min_score(deep: SearchService) -> None:
    with pytest.raises(InvalidQuery) as refused:
        deep.search_text("a photo", Modality.IMAGE, 5, options=ResultOptions(order_by=OrderBy("number")))
    assert refused.value.field == "order_by" and "give a min_score" in refused.value.reason


def test_min_score_and_an_order_page_through_the_passing_items_sorted(deep: SearchService, bundle: Bundle) -> None:
    query = deep.embed_text("a picture")
    ranked = _scores_by_brute_force(bundle, query.vector)
    floor = _threshold_passing(ranked, 11)
    uris = {item.id: item.uri for item in bundle.items}
    expected = sorted((item_id for _, item_id in ranked[:11]), key=lambda item_id: uris[item_id])
    options = [ResultOptions(offset=offset, min_score=floor, order_by=OrderBy("uri", descending=False))
               for offset in (0, 4, 8)]
    pages = [deep.search_vector(query, Modality.IMAGE, 4, page) for page in options]
    assert [hit.item.id for answer in pages for hit in answer.hits] == expected
    assert [answer.matched for answer in pages] == [11, 11, 11] and [answer.more for answer in pages] == [True,
                                                                                                         True, False]


def test_dedup_collapses_among_the_passing_items_and_matched_counts_them_before(deep: SearchService,
                                                                                bundle: Bundle) -> None:
    query = deep.embed_text("noise")
    floor = _threshold_passing(_scores_by_brute_force(bundle, query.vector), 6)
    answer = deep.search_vector(query, Modality.IMAGE, 10, ResultOptions(min_score=floor, dedup=1e-6))
    assert answer.matched == 6
    assert len(answer.hits) == 1 and len(answer.hits[0].duplicates) == 5  # every cosine is above 1e-6


def test_a_keyword_search_cuts_its_bm25_scores(deep: SearchService) -> None:
    keyword = Ranking(SearchMode.KEYWORD)
    everything = deep.search_text("picture 3 or 27", Modality.IMAGE, 20, ranking=keyword)
    scores = sorted({hit.score for hit in everything.hits}, reverse=True)
    floor = (scores[0] + scores[1]) / 2
    cut = deep.search_text("picture 3 or 27", Modality.IMAGE, 20, options=ResultOptions(min_score=floor),
                           ranking=keyword)
    assert cut.hits and all(hit.score >= floor for hit in cut.hits)
    assert _ids(cut.hits) == [hit.item.id for hit in everything.hits if hit.score >= floor]
    assert cut.matched == len(cut.hits)


def test_a_hybrid_search_cuts_its_fused_scores(deep: SearchService) -> None:
    hybrid = Ranking(SearchMode.HYBRID)
    everything = deep.search_text("caption of picture 3", Modality.IMAGE, 20, ranking=hybrid)
    cut = deep.search_text("caption of picture 3", Modality.IMAGE, 5, options=ResultOptions(min_score=0.02),
                           ranking=hybrid)
    # RRF: an item in one list only scores at most 1/(60 + 1) ≈ 0.016, so only items both lists
    # hold pass 0.02; both lists are 50 deep here, cut or not, so the scores are the same.
    passing = [hit for hit in everything.hits if hit.score >= 0.02]
    assert passing and all(set(hit.ranks or {}) == {"vector", "keyword"} for hit in passing)
    assert _ids(cut.hits) == _ids(passing)[:5] and cut.matched == len(passing)


def test_min_score_must_be_a_finite_number(deep: SearchService) -> None:
    with pytest.raises(InvalidQuery) as refused:
        deep.search_text("x", Modality.IMAGE, 5, options=ResultOptions(min_score=float("nan")))
    assert refused.value.field == "min_score"


def test_live_items_sort_among_the_base_items_by_the_same_values(encoder: ClipEncoder, bundle_path: Path,
                                                                 tmp_path: Path) -> None:
    with opened_service(encoder, private_copy(bundle_path, tmp_path)) as service:
        writer = CollectionWriter(service)
        [late, early] = writer.add_texts([TextEntry("a sentence written later", metadata={"rank": 99.5}),
                                          TextEntry("a sentence written first", metadata={"rank": -1})])
        base = [item.id for item in service.bundle.items if item.modality is Modality.TEXT]
        answer = service.search_text("a sentence", Modality.TEXT, 20,
                                     options=ResultOptions(order_by=OrderBy("rank", descending=True)))
        ids = [hit.item.id for hit in answer.hits]
        assert ids[:2] == [late, early] and set(ids[2:]) <= set(base)  # base texts have no rank: last
        assert answer.matched == len(base) + 2

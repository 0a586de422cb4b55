"""Fusing a vector ranking with a keyword ranking, against the formulas worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery
from clipsearch.search.hybrid import FusionMethod, RankedList, Ranking, SearchMode, check_ranking, fuse, merge_ranked


def _ranked(ids: list[int], scores: list[float]) -> RankedList:
    return RankedList(np.array(ids, np.int64), np.array(scores, np.float32))


VECTOR = _ranked([10, 20, 30], [0.9, 0.5, 0.4])
KEYWORD = _ranked([30, 40], [7.0, 1.0])


def test_reciprocal_rank_fusion_adds_one_over_k_plus_rank_per_list() -> None:
    fused = fuse({"vector": VECTOR, "keyword": KEYWORD}, Ranking(SearchMode.HYBRID), rrf_k=60)
    expected = {10: 1 / 61, 20: 1 / 62, 30: 1 / 63 + 1 / 61, 40: 1 / 62}
    assert [result.item_id for result in fused] == [30, 10, 20, 40]  # 20 and 40 tie: the smaller id first
    assert {result.item_id: result.score for result in fused} == pytest.approx(expected)
    assert {result.item_id: result.ranks for result in fused} == {
        10: {"vector": 1}, 20: {"vector": 2}, 30: {"vector": 3, "keyword": 1}, 40: {"keyword": 2}}


def test_a_vector_weight_scales_each_lists_share() -> None:
    fused = fuse({"vector": VECTOR, "keyword": KEYWORD}, Ranking(SearchMode.HYBRID, vector_weight=0.8), rrf_k=1)
    expected = {10: 1.6 / 2, 20: 1.6 / 3, 30: 1.6 / 4 + 0.4 / 2, 40: 0.4 / 3}
    assert {result.item_id: result.score for result in fused} == pytest.approx(expected)
    assert [result.item_id for result in fused] == [10, 30, 20, 40]


def test_weighted_fusion_mixes_scores_scaled_to_their_lists_range() -> None:
    fused = fuse({"vector": VECTOR, "keyword": KEYWORD}, Ranking(SearchMode.HYBRID, FusionMethod.WEIGHTED, 0.5))
    # vector: (0.9, 0.5, 0.4) → (1, 0.2, 0); keyword: (7, 1) → (1, 0)
    expected = {10: 0.5, 20: 0.1, 30: 0.5, 40: 0.0}
    assert {result.item_id: result.score for result in fused} == pytest.approx(expected, abs=1e-6)
    assert [result.item_id for result in fused] == [10, 30, 20, 40]


def test_a_list_of_equal_scores_counts_each_as_the_best() -> None:
    fused = fuse({"keyword": _ranked([1, 2], [3.0, 3.0])}, Ranking(SearchMode.HYBRID, FusionMethod.WEIGHTED, 0.0))
    assert [(result.item_id, result.score) for result in fused] == [(1, 1.0), (2, 1.0)]


def test_merging_two_rankings_orders_by_score_then_id_and_cuts_at_the_depth() -> None:
    merged = merge_ranked(_ranked([5, 1], [2.0, 1.0]), _ranked([3, 4], [2.0, 0.5]), depth=3)
    assert merged.ids.tolist() == [3, 5, 1]


def test_a_vector_weight_outside_zero_to_one_is_refused_by_name() -> None:
    with pytest.raises(InvalidQuery) as raised:
        check_ranking(Ranking(SearchMode.HYBRID, vector_weight=1.5))
    assert raised.value.field == "hybrid.vector_weight"

"""Filtered searches give brute force's answer over exactly the allowed items, on every searcher and
path: a few rows gathered, a mask over all rows, an fp16 scan with rescoring, FAISS with an ID
selector, and a FAISS index's stored vectors scored directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsearch.index.exact import DIRECT_FRACTION, ExactIndex
from clipsearch.index.faiss_index import build_index
from clipsearch.index.searchers import ExactSearcher, FaissSearcher, Searcher
from clipsearch.index.sharding import ShardedExactIndex
from tests.support.reference import assert_same_top_k, brute_force, unit_vectors

COUNT, DIM = 4000, 32


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    # Ids in no particular order, as a bundle's may be after items come and go.
    ids = np.random.default_rng(7).permutation(COUNT).astype(np.int64) * 5 + 11
    return unit_vectors(COUNT, DIM), ids


def _allowed_ids(ids: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    chosen = np.random.default_rng(seed).random(len(ids)) < share
    return np.sort(ids[chosen])


def _brute_force_over(vectors: np.ndarray, ids: np.ndarray, allowed: np.ndarray, queries: np.ndarray,
                      k: int) -> np.ndarray:
    keep = np.isin(ids, allowed)
    return brute_force(vectors[keep], ids[keep], queries, k).ids


def _searchers(vectors: np.ndarray, ids: np.ndarray) -> dict[str, Searcher]:
    flat, _ = build_index(vectors, ids, "Flat")
    return {"exact fp32": ExactSearcher(ExactIndex(vectors, ids)),
            "exact fp16 with rescoring": ExactSearcher(ExactIndex(vectors, ids, scan_dtype=torch.float16)),
            "exact split over 3 shards": ExactSearcher(ShardedExactIndex(vectors, ids, ["cpu"] * 3)),
            "exact fp16 split over 2 shards": ExactSearcher(ShardedExactIndex(vectors, ids, ["cpu"] * 2,
                                                                              torch.float16)),
            "faiss flat": FaissSearcher(flat)}


@pytest.mark.parametrize("share", [0.6, 1 / (2 * DIRECT_FRACTION), 0.002])
@pytest.mark.parametrize("name", ["exact fp32", "exact fp16 with rescoring", "exact split over 3 shards",
                                  "exact fp16 split over 2 shards", "faiss flat"])
def test_filtered_exact_search_equals_brute_force_over_the_allowed_items(
        corpus: tuple[np.ndarray, np.ndarray], share: float, name: str) -> None:
    vectors, ids = corpus
    allowed_ids = _allowed_ids(ids, share)
    searcher = _searchers(vectors, ids)[name]
    queries = unit_vectors(9, DIM, seed=3)
    allowed = searcher.allow(allowed_ids)
    found = searcher.search(queries, 10, allowed)
    keep = np.isin(ids, allowed_ids)
    assert_same_top_k(brute_force(vectors[keep], ids[keep], queries, min(10, int(keep.sum()))), found)


@pytest.mark.parametrize("hidden_share", [0.01, 0.99])
@pytest.mark.parametrize("name", ["exact fp32", "exact split over 3 shards", "faiss flat"])
def test_all_but_a_few_hidden_items_equals_brute_force_over_the_others(
        corpus: tuple[np.ndarray, np.ndarray], hidden_share: float, name: str) -> None:
    vectors, ids = corpus
    hidden = _allowed_ids(ids, hidden_share, seed=5)
    hidden = np.concatenate([hidden, [ids.max() + 5]])  # an id the index never held counts for nothing
    searcher = _searchers(vectors, ids)[name]
    allowed = searcher.allow_all_but(hidden, np.sort(ids))
    assert len(allowed) == COUNT - len(hidden) + 1
    if name == "faiss flat" and hidden_share < 0.5:  # a selector of the few hidden, not a list of the rest
        assert len(allowed.ids) == 0 and allowed.selector is not None
    queries = unit_vectors(9, DIM, seed=3)
    keep = ~np.isin(ids, hidden)
    assert_same_top_k(brute_force(vectors[keep], ids[keep], queries, 10), searcher.search(queries, 10, allowed))


def test_a_wide_subset_is_a_mask_and_a_narrow_one_gathers_its_rows(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    index = ExactIndex(vectors, ids)
    assert index.subset(_allowed_ids(ids, 0.5)).bias is not None
    assert index.subset(_allowed_ids(ids, 0.01)).bias is None


def test_fewer_allowed_items_than_k_gives_only_those(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    for searcher in _searchers(vectors, ids).values():
        found = searcher.search(unit_vectors(2, DIM, seed=4), 10, searcher.allow(ids[[5, 900, 33]]))
        assert found.ids.shape == (2, 3)
        assert set(found.ids[0]) == {ids[5], ids[900], ids[33]}


def test_nothing_allowed_finds_nothing(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    for searcher in _searchers(vectors, ids).values():
        assert searcher.search(unit_vectors(2, DIM), 10, searcher.allow(np.zeros(0, np.int64))).ids.shape == (2, 0)


def test_ids_the_index_does_not_hold_are_left_out(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    searcher = ExactSearcher(ExactIndex(vectors, ids))
    allowed = searcher.allow(np.array([ids[0], 3, ids[1]], dtype=np.int64))
    assert len(allowed) == 2


def test_a_masked_search_split_into_blocks_equals_brute_force(corpus: tuple[np.ndarray, np.ndarray],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, ids = corpus
    monkeypatch.setattr("clipsearch.index.exact.SCORE_BUDGET", 3 * 700)  # blocks of 700 rows for 3 queries
    allowed_ids = _allowed_ids(ids, 0.4, seed=2)
    for scan_dtype in (torch.float32, torch.float16):
        searcher = ExactSearcher(ExactIndex(vectors, ids, scan_dtype=scan_dtype))
        queries = unit_vectors(3, DIM, seed=5)
        found = searcher.search(queries, 10, searcher.allow(allowed_ids))
        keep = np.isin(ids, allowed_ids)
        assert_same_top_k(brute_force(vectors[keep], ids[keep], queries, 10), found)


@pytest.mark.parametrize("share", [0.5, 0.01])
def test_filtered_ivf_search_returns_only_allowed_items_with_recall_near_the_unfiltered(
        corpus: tuple[np.ndarray, np.ndarray], share: float) -> None:
    vectors, ids = corpus
    queries = unit_vectors(50, DIM, seed=6)
    index, spec = build_index(vectors, ids, "IVF32,Flat", recall_queries=queries)
    searcher = FaissSearcher(index)
    allowed_ids = _allowed_ids(ids, share, seed=1)
    found = searcher.search(queries, 10, searcher.allow(allowed_ids))
    assert np.isin(found.ids, allowed_ids).all()
    truth = _brute_force_over(vectors, ids, allowed_ids, queries, 10)
    recall = np.mean([len(np.intersect1d(row, truth_row)) / 10 for row, truth_row in zip(found.ids, truth,
                                                                                           strict=True)])
    assert spec.recall_at_10 is not None
    assert recall >= spec.recall_at_10 - 0.05  # nprobe grows as the filter narrows
    if share == 0.01:
        assert recall == 1.0  # few enough items to score their stored vectors directly


def test_a_wide_filter_on_ivf_uses_an_id_selector_and_returns_only_allowed_items(
        corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    index, _ = build_index(vectors, ids, "IVF32,Flat")
    searcher = FaissSearcher(index)
    allowed = searcher.allow(_allowed_ids(ids, 0.3))
    assert allowed.selector is not None  # too many to score directly
    found = searcher.search(unit_vectors(4, DIM, seed=8), 10, allowed)
    assert np.isin(found.ids, allowed.ids).all()


@pytest.mark.gpu
@pytest.mark.parametrize("share", [0.5, 0.01])
def test_on_a_gpu_a_filtered_fp16_scan_equals_brute_force_over_the_allowed_items(share: float) -> None:
    vectors = unit_vectors(200_000, dim=512)
    ids = np.arange(len(vectors), dtype=np.int64) * 3
    searcher = ExactSearcher(ExactIndex(vectors, ids, "cuda"))
    allowed_ids = _allowed_ids(ids, share)
    keep = np.isin(ids, allowed_ids)
    for batch in (1, 64):
        queries = unit_vectors(batch, dim=512, seed=batch)
        found = searcher.search(queries, 10, searcher.allow(allowed_ids))
        assert_same_top_k(brute_force(vectors[keep], ids[keep], queries, 10), found)

"""The resident-matrix exact search gives FAISS's exact answer: on the CPU, in fp16 with rescoring, on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsearch.index.exact import CANDIDATE_MARGIN, ExactIndex
from clipsearch.index.faiss_index import build_index, load_index, save_index, search
from tests.support.reference import assert_same_top_k, brute_force, unit_vectors


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    vectors = unit_vectors(5000, dim=64)
    return vectors, np.arange(10_000, 15_000, dtype=np.int64)[::-1].copy()


def test_fp32_search_equals_brute_force_ids_and_scores(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    queries = unit_vectors(40, dim=64, seed=1)
    found = ExactIndex(vectors, ids).search(queries, 10)
    assert_same_top_k(brute_force(vectors, ids, queries, 10), found)
    assert found.scores.dtype == np.float32 and found.ids.dtype == np.int64


@pytest.mark.parametrize("count", [1, 2, 3, 17])
def test_any_number_of_queries_gets_each_querys_own_answer(corpus: tuple[np.ndarray, np.ndarray], count: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # One query takes the matrix-vector path, several the item-major product; blocks split both.
    vectors, ids = corpus
    queries = unit_vectors(count, dim=64, seed=10 + count)
    index = ExactIndex(vectors, ids)
    together = index.search(queries, 10)
    assert_same_top_k(brute_force(vectors, ids, queries, 10), together)
    for row, query in enumerate(queries):
        alone = index.search(query[None], 10)
        np.testing.assert_array_equal(alone.ids[0], together.ids[row])
        np.testing.assert_allclose(alone.scores[0], together.scores[row], atol=1e-6)
    monkeypatch.setattr("clipsearch.index.exact.SCORE_BUDGET", 333 * count)  # blocks of 333 rows
    assert_same_top_k(together, ExactIndex(vectors, ids).search(queries, 10))


def test_an_fp16_scan_with_rescoring_gives_the_fp32_ids_and_fp32_scores(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    queries = unit_vectors(40, dim=64, seed=2)
    found = ExactIndex(vectors, ids, scan_dtype=torch.float16).search(queries, 10)
    assert_same_top_k(brute_force(vectors, ids, queries, 10), found)  # rescored: fp32 precision, not fp16


def test_near_duplicates_that_fp16_cannot_order_are_searched_again_in_fp32() -> None:
    # 200 copies of one direction, nudged so their scores differ by ~1e-4: plenty for fp32, less
    # than fp16 can tell apart. The fp16 candidates cannot be proven to hold the true top 10.
    rng = np.random.default_rng(3)
    base = unit_vectors(1, dim=64, seed=4)
    copies = base + rng.standard_normal((200, 64)).astype(np.float32) * 1e-4
    vectors = np.concatenate([copies / np.linalg.norm(copies, axis=1, keepdims=True), unit_vectors(800, dim=64)])
    ids = np.arange(len(vectors), dtype=np.int64)
    query = base + unit_vectors(1, dim=64, seed=5)
    query /= np.linalg.norm(query)
    index = ExactIndex(vectors, ids, scan_dtype=torch.float16)
    found = index.search(query, 10)
    expected = brute_force(vectors, ids, query, 10)
    assert np.diff(expected.scores[0]).max() < 0  # fp32 orders them without ties
    np.testing.assert_array_equal(found.ids, expected.ids)
    assert index.rescans == 1


def test_searching_block_by_block_merges_to_the_same_answer(corpus: tuple[np.ndarray, np.ndarray],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, ids = corpus
    queries = unit_vectors(30, dim=64, seed=5)
    whole = ExactIndex(vectors, ids).search(queries, 7)
    monkeypatch.setattr("clipsearch.index.exact.SCORE_BUDGET", 30 * 333)  # blocks of 333 rows, the last one short
    blocked = ExactIndex(vectors, ids).search(queries, 7)
    np.testing.assert_array_equal(blocked.ids, whole.ids)
    np.testing.assert_allclose(blocked.scores, whole.scores, atol=1e-6)


def test_k_beyond_the_size_returns_every_item_and_empty_inputs_return_empty_rows() -> None:
    vectors = unit_vectors(5, dim=8)
    index = ExactIndex(vectors, np.arange(5, dtype=np.int64), scan_dtype=torch.float16)
    assert sorted(index.search(unit_vectors(1, dim=8, seed=1), 10 + CANDIDATE_MARGIN).ids[0].tolist()) == \
        [0, 1, 2, 3, 4]
    assert index.search(np.zeros((0, 8), np.float32), 3).ids.shape == (0, 0)
    assert ExactIndex(np.zeros((0, 8), np.float32), np.zeros(0, np.int64)).search(vectors, 3).ids.shape == (5, 0)


def test_a_saved_memory_mapped_flat_index_is_searched_in_place(corpus: tuple[np.ndarray, np.ndarray],
                                                             tmp_path: object) -> None:
    vectors, ids = corpus
    index, _ = build_index(vectors, ids, "Flat")
    path = tmp_path / "image.faiss"  # type: ignore[operator]
    save_index(index, path)
    loaded = load_index(path)
    queries = unit_vectors(20, dim=64, seed=6)
    expected = search(loaded, queries, 10)
    found = ExactIndex.from_faiss(loaded).search(queries, 10)
    np.testing.assert_array_equal(found.ids, expected.ids)
    np.testing.assert_allclose(found.scores, expected.scores, atol=1e-5)


def test_only_flat_indices_and_fp16_or_fp32_scans_are_accepted(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = corpus
    ivf, _ = build_index(vectors, ids, "IVF16,Flat")
    with pytest.raises(TypeError, match="not a Flat index"):
        ExactIndex.from_faiss(ivf)
    with pytest.raises(ValueError, match="float16 or float32"):
        ExactIndex(vectors, ids, scan_dtype=torch.bfloat16)


@pytest.mark.gpu
def test_on_a_gpu_the_fp16_scan_equals_faiss_exact_search() -> None:
    vectors = unit_vectors(200_000, dim=512)
    ids = np.arange(len(vectors), dtype=np.int64) * 3
    index, _ = build_index(vectors, ids, "Flat")
    resident = ExactIndex.from_faiss(index, "cuda")
    assert resident.scan_dtype == torch.float16
    for batch in (1, 64, 1024):
        queries = unit_vectors(batch, dim=512, seed=batch)
        expected = search(index, queries, 10)
        found = resident.search(queries, 10)
        np.testing.assert_array_equal(found.ids, expected.ids)
        np.testing.assert_allclose(found.scores, expected.scores, atol=1e-5)


def test_vectors_that_are_not_unit_length_still_get_the_exact_answer() -> None:
    # Long vectors make long scores (about 100 here), where fp16 steps are 0.06 apart: the error
    # bound must grow with the norms, or the fp16 candidates would be trusted when they are wrong.
    rng = np.random.default_rng(8)
    base = unit_vectors(1, dim=32, seed=10)
    copies = base + rng.standard_normal((300, 32)).astype(np.float32) * 1e-2
    vectors = np.concatenate([copies / np.linalg.norm(copies, axis=1, keepdims=True), unit_vectors(700, dim=32)]) * 20
    ids = np.arange(len(vectors), dtype=np.int64)
    queries = (base + unit_vectors(5, dim=32, seed=11)) * 7
    index = ExactIndex(vectors, ids, scan_dtype=torch.float16)
    found = index.search(queries, 10)
    expected = brute_force(vectors, ids, queries, 10)
    np.testing.assert_array_equal(found.ids, expected.ids)
    np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-5)
    assert index.rescans > 0

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.errors import IndexSettingsInvalid
from clipsearch.index.faiss_index import build_index, load_index, reconstruct, save_index, search
from clipsearch.index.searchers import searcher_for
from clipsearch.index.spec import RECALL_TARGET
from tests.support.reference import assert_same_top_k, brute_force, unit_vectors


def test_exact_search_equals_brute_force() -> None:
    vectors, queries = unit_vectors(2000), unit_vectors(50, seed=1)
    ids = np.arange(1000, 3000, dtype=np.int64)[::-1].copy()
    index, spec = build_index(vectors, ids, "Flat")
    assert spec.exact
    assert_same_top_k(brute_force(vectors, ids, queries, 10), search(index, queries, 10))


def test_k_larger_than_the_index_returns_every_item() -> None:
    index, _ = build_index(unit_vectors(5), np.arange(5, dtype=np.int64), "Flat")
    found = search(index, unit_vectors(1, seed=2), 10)
    assert sorted(found.ids[0].tolist()) == [0, 1, 2, 3, 4]




def test_ivf_reaches_the_recall_target_on_cross_modal_queries_and_records_it() -> None:
    vectors = unit_vectors(5000)
    # Queries from a shifted distribution stand in for the other modality.
    queries = unit_vectors(200, seed=9) + 0.5 * vectors[:200]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index, spec = build_index(vectors, np.arange(5000, dtype=np.int64), "IVF64,Flat", recall_queries=queries,
                              queries_label="text (cross-modal)")
    assert not spec.exact
    assert spec.recall_at_10 is not None and spec.recall_at_10 >= RECALL_TARGET
    assert spec.recall_queries == "text (cross-modal)"
    assert spec.params["nlist"] == 64 and 1 <= spec.params["nprobe"] <= 64
    found = search(index, queries, 10).ids
    expected = brute_force(vectors, np.arange(5000), queries, 10).ids
    measured = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, expected, strict=True)])
    assert measured == pytest.approx(spec.recall_at_10, abs=1e-4)


@pytest.mark.gpu
def test_on_a_gpu_an_ivf_index_is_built_and_searched_there_as_on_the_cpu() -> None:
    """faiss-gpu's copy of an index keeps its GPU resources alive (FAISS 1.12+ refuses a new
    attribute on an index, which failed every GPU copy until the first GPU run found it)."""
    vectors, queries = unit_vectors(5000), unit_vectors(20, seed=4)
    ids = np.arange(5000, dtype=np.int64)
    on_cpu, spec = build_index(vectors, ids, "IVF64,Flat", recall_queries=queries)
    on_gpu, gpu_spec = build_index(vectors, ids, "IVF64,Flat", recall_queries=queries, use_gpu=True)
    assert gpu_spec.params["nlist"] == spec.params["nlist"] and on_gpu.ntotal == 5000
    searcher = searcher_for(on_cpu, exact=False, devices=[torch.device("cuda")], use_gpu=True)
    found = searcher.search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.ids, search(on_cpu, queries, 10).ids,
                                                                    strict=True)])
    assert overlap >= 0.9  # the same lists probed; GPU and CPU kernels may order near-ties apart


def test_an_invalid_factory_string_is_refused_by_name() -> None:
    with pytest.raises(IndexSettingsInvalid, match="NotAnIndex"):
        build_index(unit_vectors(10), np.arange(10, dtype=np.int64), "NotAnIndex")


def test_more_ivf_lists_than_vectors_is_refused_clearly() -> None:
    with pytest.raises(IndexSettingsInvalid, match="only 10 vectors"):
        build_index(unit_vectors(10), np.arange(10, dtype=np.int64), "IVF64,Flat")


def test_a_saved_index_loads_with_the_same_results_and_vectors(tmp_path: Path) -> None:
    vectors = unit_vectors(300)
    index, _ = build_index(vectors, np.arange(300, dtype=np.int64) * 7, "Flat")
    save_index(index, tmp_path / "index.faiss")
    loaded = load_index(tmp_path / "index.faiss")
    queries = unit_vectors(5, seed=3)
    np.testing.assert_array_equal(search(loaded, queries, 5).ids, search(index, queries, 5).ids)
    np.testing.assert_array_equal(reconstruct(loaded, 7 * 12), vectors[12])
    assert reconstruct(loaded, 5) is None
    assert not (tmp_path / "index.faiss.tmp").exists()

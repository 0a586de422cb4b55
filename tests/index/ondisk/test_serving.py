"""Serving an on-disk index: the fp16 store read row by row, candidates re-ranked exactly, the bundle's
lists served read-only after a move, and live changes and filters over it."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch.errors import BundleError
from clipsearch.index import ondisk
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.store.bundle import load_bundle, on_disk_file_names
from clipsearch.store.filters import parse_filter
from clipsearch.store.live import NewItem
from tests.support.ondisk import (
    DIM,
    Built,
    Closer,
    corpus,
)
from tests.support.reference import brute_force


def test_the_store_holds_every_vector_at_half_precision_by_ascending_id(built: Built,
        request_close: Closer) -> None:
    store = ondisk.VectorStore(built.files.vectors, built.files.ids)
    request_close(store)
    assert np.array_equal(store.ids, built.ids)
    picked = built.ids[[5, 0, 9_999, 17]]
    np.testing.assert_allclose(store.vectors_of(picked), built.vectors[[5, 0, 9_999, 17]], atol=1e-3)
    assert store.vector(int(built.ids[0]) + 1) is None  # in a gap between ids
    with pytest.raises(KeyError):
        store.vectors_of(np.array([int(built.ids[-1]) + 1]))


def test_a_store_whose_vectors_do_not_match_its_ids_is_refused_naming_both_files(built: Built, tmp_path: Path) -> None:
    np.save(tmp_path / "image.vectors.npy", np.zeros((5, DIM), np.float16))
    with pytest.raises(BundleError, match=r"image.vectors.npy: holds \(5, 32\).*12000 ids of image.ids.npy"):
        ondisk.VectorStore(tmp_path / "image.vectors.npy", built.files.ids)


def test_the_rerank_orders_the_candidates_by_their_exact_scores(built: Built,
        request_close: Closer) -> None:
    store = ondisk.VectorStore(built.files.vectors, built.files.ids)
    request_close(store)
    index = built.files.index
    faiss.extract_index_ivf(index).nprobe = 4
    _, candidates = index.search(built.queries[:20], 50)
    for query, row in zip(built.queries[:20], candidates, strict=True):
        row = row[row >= 0]
        expected = brute_force(store.vectors_of(row), row, query, 5)
        found = ondisk.search(index, store, query[None], 5, 10)
        assert np.array_equal(found.ids[0], expected.ids[0])
        np.testing.assert_allclose(found.scores[0], expected.scores[0], atol=1e-5)


def test_a_bundle_keeps_its_lists_and_vectors_beside_the_index_and_serves_them_after_a_move(
        on_disk_bundle: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(on_disk_bundle, tmp_path / "elsewhere"))
    bundle = load_bundle(moved)
    try:
        assert set(on_disk_file_names(Modality.IMAGE)) <= set(bundle.manifest.files)
        inverted_lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(bundle.indices[Modality.IMAGE]).invlists)
        assert inverted_lists.filename == str(moved / "image.ivfdata") and inverted_lists.read_only
        ids, vectors, _ = corpus()
        assert np.array_equal(bundle.base_ids(Modality.IMAGE), ids)
        np.testing.assert_allclose(bundle.base_vectors(Modality.IMAGE, ids[:3]), vectors[:3], atol=1e-3)
    finally:
        bundle.close()


def test_live_adds_deletes_and_filters_work_on_an_on_disk_index(
        encoder: ClipEncoder, on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    ids, vectors, queries = corpus()
    with opened_service(encoder, path) as service:
        query = queries[0]
        first = [hit.item.id for hit in service.search(query, Modality.IMAGE, 10)]
        truth = brute_force(vectors, ids, query, 10).ids[0]
        assert len(set(first) & set(truth.tolist())) >= 8  # the build's recall, on one query

        service.collection.live.delete(first[:3])
        added = service.collection.live.write([NewItem("new", Modality.IMAGE, "img/new", None, {"n": 1_000_000},
                                                       "hash-new", query)])
        after = [hit.item.id for hit in service.search(query, Modality.IMAGE, 10)]
        assert after[0] == added[0]  # the query itself, added live, comes first
        assert not set(after) & set(first[:3])  # deleted base items are gone
        assert set(first[3:]) <= set(after)

        for bound in (400, 30_000):  # few allowed items: scored from the store; many: a selector in the lists
            options = ResultOptions(filter=parse_filter({"key": "n", "range": {"lt": bound}}))
            hits = service.search_vector(service.embed_text("anything"), Modality.IMAGE, 5, options).hits
            assert hits and all(hit.item.extra["n"] < bound for hit in hits)
        few = ResultOptions(filter=parse_filter({"key": "n", "range": {"lt": 400}}))
        allowed = ids[ids < 400]
        allowed = allowed[~np.isin(allowed, first[:3])]
        expected = brute_force(vectors[np.searchsorted(ids, allowed)], allowed, query, 5)
        found = service.search_vector(QueryVector(query), Modality.IMAGE, 5, few).hits
        assert [hit.item.id for hit in found] == expected.ids[0].tolist()  # exact: every allowed item scored

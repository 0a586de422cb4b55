"""Refilling an on-disk index for a compaction: without training while the rows added stay few, trained
and tuned again past the share, streamed from the fp16 store, and safe to kill."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsearch.config import CompactionPolicy
from clipsearch.index import ondisk
from clipsearch.index.spec import RECALL_TARGET
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.store.bundle import load_bundle
from clipsearch.store.compaction import compact
from clipsearch.store.live import count_live_changes
from clipsearch.util.synthetic import ClusteredEmbeddings
from tests.support.ondisk import (
    COUNT,
    DIM,
    centroids_of,
    change_on_disk_bundle,
    recall_at_10,
)
from tests.support.reference import brute_force


def test_a_compaction_refills_an_on_disk_index_with_its_live_items_without_training(
        on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    before = load_bundle(path)
    trained, params = centroids_of(before.indices[Modality.IMAGE]), before.manifest.modalities[Modality.IMAGE].index
    before.close()
    expected = change_on_disk_bundle(path)

    summary = compact(path)

    assert summary is not None and summary.retrained == [] and summary.counts == {"image": COUNT + 38 - 20}
    assert count_live_changes(path) == 0 and not list(tmp_path.glob(".bundle.*-*"))
    bundle = load_bundle(path)  # checksums verified
    try:
        index = bundle.indices[Modality.IMAGE]
        spec = bundle.manifest.modalities[Modality.IMAGE].index
        np.testing.assert_array_equal(centroids_of(index), trained)
        assert spec.params == {**params.params, "added_since_training": 38 + 5}  # live rows folded in
        assert spec.recall_at_10 == params.recall_at_10
        ids = np.array(sorted(expected))
        vectors = np.stack([expected[item_id] for item_id in ids])
        assert np.array_equal(bundle.base_ids(Modality.IMAGE), ids)
        np.testing.assert_allclose(bundle.base_vectors(Modality.IMAGE, ids), vectors, atol=1e-3)
        # The lists equal those of the trained index filled in memory with the same vectors (the
        # kept ones as the old store held them, the live ones as written), in the same order.
        reference = ondisk.emptied(on_disk_bundle / "image.faiss")
        reference.add_with_ids(vectors, ids)
        faiss.extract_index_ivf(reference).nprobe = faiss.extract_index_ivf(index).nprobe
        queries = ClusteredEmbeddings(DIM, clusters=64, seed=3).rows("text", 0, 20)
        found, wanted = index.search(queries, 30), reference.search(queries, 30)
        np.testing.assert_array_equal(found[1], wanted[1])
        np.testing.assert_allclose(found[0], wanted[0], rtol=1e-5)
    finally:
        bundle.close()


def test_an_on_disk_index_is_trained_and_tuned_again_once_the_rows_added_pass_the_stated_share(
        encoder: ClipEncoder, on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    before = load_bundle(path)
    trained = centroids_of(before.indices[Modality.IMAGE])
    before.close()
    expected = change_on_disk_bundle(path)

    summary = compact(path, CompactionPolicy(retrain_fraction=0.001))  # 45 rows added pass 0.1% of 12,000

    assert summary is not None and summary.retrained == ["image"]
    bundle = load_bundle(path)
    try:
        spec = bundle.manifest.modalities[Modality.IMAGE].index
        assert not np.array_equal(centroids_of(bundle.indices[Modality.IMAGE]), trained)
        assert spec.params["on_disk"] and "added_since_training" not in spec.params
        assert spec.params["trained_with"] == len(expected)
        assert spec.recall_at_10 is not None and spec.recall_at_10 >= RECALL_TARGET
        assert summary.recall_at_10 == {"image": spec.recall_at_10}
    finally:
        bundle.close()
    ids = np.array(sorted(expected))
    vectors = np.stack([expected[item_id] for item_id in ids])
    # The bundle holds no texts, so the index was tuned on image queries (the build had been given
    # text queries from outside the bundle): recall is checked on unseen images.
    assert spec.recall_queries == "same modality (no other corpus)"
    queries = ClusteredEmbeddings(DIM, clusters=64, seed=3).rows("image", COUNT + 45, COUNT + 95)
    with opened_service(encoder, path) as service:
        found = [[hit.item.id for hit in service.search(query, Modality.IMAGE, 10)] for query in queries]
    truth = brute_force(vectors, ids, queries, 10).ids
    # The tuning's queries are drawn from the index itself; these unseen ones reach 0.912 with this
    # seed. The bound is 6 hits of the 500 below that: room for FAISS's k-means to train other
    # centroids on another build or CPU, and not for a refill that lost rows (each lost row costs a hit
    # in every query whose top 10 holds it).
    assert recall_at_10(TopK(np.zeros((50, 10), np.float32), np.array(found)), TopK(np.zeros_like(truth), truth)) \
        >= 0.9


KILLED_COMPACTION = """
import os, signal, sys
from pathlib import Path
from clipsearch.index.ondisk import passes
from clipsearch.store.compaction import Compaction
filled = passes.fill
def fill_then_die(*args, **kwargs):
    filled(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the lists are written, not yet merged or swapped in
passes.fill = fill_then_die
Compaction(Path(sys.argv[1])).prepare()
"""


def test_a_compaction_of_an_on_disk_index_killed_half_way_leaves_the_bundle_and_its_log_as_they_were(
        on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    expected = change_on_disk_bundle(path)
    changes = count_live_changes(path)

    killed = subprocess.Popen([sys.executable, "-c", KILLED_COMPACTION, str(path)])

    assert killed.wait() == -signal.SIGKILL
    assert [debris.name for debris in tmp_path.glob(".bundle.*-*")] == [f".bundle.compacting.staging-{killed.pid}"]
    assert count_live_changes(path) == changes
    load_bundle(path).close()  # as it was: checksums verified
    summary = compact(path)  # the next one clears the dead one's work
    assert summary is not None and summary.counts == {"image": len(expected)}
    assert not list(tmp_path.glob(".bundle.*-*"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.integers(0, 40), kept_share=st.floats(0, 1), added=st.integers(0, 15),
       rows_at_once=st.integers(1, 9), seed=st.integers(0, 1000))
def test_a_pass_over_a_store_merged_with_live_rows_yields_every_row_once_in_ascending_id_order(
        tmp_path: Path, stored: int, kept_share: float, added: int, rows_at_once: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    every_id = rng.choice(1_000, size=stored + added, replace=False)  # the added ones fall anywhere among them
    stored_ids, added_ids = np.sort(every_id[:stored]), every_id[stored:]
    stored_vectors = rng.standard_normal((stored, 4)).astype(np.float16)
    added_vectors = rng.standard_normal((added, 4)).astype(np.float32)
    np.save(tmp_path / "v.npy", stored_vectors.reshape(stored, 4))
    np.save(tmp_path / "i.npy", stored_ids.astype(np.int64))
    keep = rng.random(stored) < kept_share
    with ondisk.VectorStore(tmp_path / "v.npy", tmp_path / "i.npy") as store:
        parts = list(ondisk.chunks_from_store(store, keep, added_ids, added_vectors, rows_at_once)())
    ids = np.concatenate([np.zeros(0, np.int64)] + [part_ids for part_ids, _ in parts])
    vectors = np.concatenate([np.zeros((0, 4), np.float32)] + [part_vectors for _, part_vectors in parts])
    expected = {**dict(zip(stored_ids[keep].tolist(), stored_vectors[keep].astype(np.float32), strict=True)),
                **dict(zip(added_ids.tolist(), added_vectors, strict=True))}
    assert ids.tolist() == sorted(expected)
    assert all(len(part_ids) for part_ids, _ in parts)  # no empty chunk
    for item_id, vector in zip(ids.tolist(), vectors, strict=True):
        np.testing.assert_array_equal(vector, expected[item_id])

"""A compaction's new indices: IVF refilled without training until the policy's share, then trained
and measured again; compressed vectors refused; the new base's rows in id order."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch.config import CompactionPolicy
from clipsearch.errors import CannotCompact
from clipsearch.index import faiss_index
from clipsearch.index.spec import RECALL_TARGET
from clipsearch.modality import Modality
from clipsearch.store.bundle import load_bundle
from clipsearch.store.compaction import compact
from clipsearch.store.compaction.rebuild import Rebuild
from clipsearch.store.live import LIVE_FILE, LiveLog, count_live_changes
from tests.support.bundles import DIM, ReferenceCollection, make_bundle, new_item, unit_rows
from tests.support.reference import assert_same_top_k, brute_force


def test_ivf_takes_the_folded_rows_without_training_until_the_stated_share_then_trains_and_measures_again(
        tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "bundle", 2000, factory="IVF16,Flat")
    policy = CompactionPolicy(retrain_fraction=0.5)

    def centroids() -> np.ndarray:
        loaded = load_bundle(path)
        ivf = faiss.extract_index_ivf(loaded.indices[Modality.IMAGE])
        found = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        loaded.close()
        return found

    def add(count: int, seed: int) -> None:
        bundle = load_bundle(path)
        log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
        reference.write(log, [new_item(f"add-{seed}-{number}", seed * 10_000 + number) for number in range(count)])
        log.close()
        bundle.close()

    trained = centroids()
    bundle = load_bundle(path)
    reference = ReferenceCollection(bundle)
    bundle.close()
    add(200, 1)
    summary = compact(path, policy)
    assert summary is not None and summary.retrained == []
    np.testing.assert_array_equal(centroids(), trained)
    spec = load_bundle(path).manifest.modalities[Modality.IMAGE].index
    assert spec.params["added_since_training"] == 200 and spec.params["trained_with"] == 2000
    reference.assert_served_by(path)
    _assert_exhaustive_search_equals_brute_force(path, reference)

    add(900, 2)  # 1100 added since training: past half of 2000
    summary = compact(path, policy)
    assert summary is not None and summary.retrained == ["image"]
    assert not np.array_equal(centroids(), trained)
    spec = load_bundle(path).manifest.modalities[Modality.IMAGE].index
    assert "added_since_training" not in spec.params and spec.params["trained_with"] == 3100
    assert spec.recall_at_10 is not None and spec.recall_at_10 >= RECALL_TARGET
    assert summary.recall_at_10 == {"image": spec.recall_at_10}
    reference.assert_served_by(path)
    _assert_exhaustive_search_equals_brute_force(path, reference)


def _assert_exhaustive_search_equals_brute_force(path: Path, reference: ReferenceCollection) -> None:
    bundle = load_bundle(path)
    index = bundle.indices[Modality.IMAGE]
    faiss.extract_index_ivf(index).nprobe = faiss.extract_index_ivf(index).nlist  # every list: exact
    ids = np.array(sorted(reference.items))
    vectors = np.stack([reference.items[item_id][3] for item_id in ids])
    for query in unit_rows(5, 7):
        assert_same_top_k(brute_force(vectors, ids, query, 10), faiss_index.search(index, query[None], 10))
    bundle.close()


def test_an_index_of_compressed_vectors_is_refused_naming_its_factory(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "bundle", 600, factory="IVF4,PQ4")
    bundle = load_bundle(path)
    log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
    log.write([new_item("new", 1)])
    log.close()
    bundle.close()
    with pytest.raises(CannotCompact, match=r"IVF4,PQ4"):
        compact(path)
    assert count_live_changes(path) == 1  # nothing changed


def test_the_new_base_holds_the_rows_not_hidden_and_the_live_ones_by_id(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "bundle", 6)
    bundle = load_bundle(path)
    log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
    [replaced] = log.write([new_item("img/2", 50)])  # a base item's key: it keeps its id
    [added] = log.write([new_item("fresh", 51)])
    log.delete([4])
    rebuild = Rebuild(bundle, log.state(), CompactionPolicy(), use_gpu=False, work=tmp_path / "work")
    base = rebuild.new_base(Modality.IMAGE)
    assert replaced == 2 and base.ids.tolist() == [0, 1, 2, 3, 5, added] and base.added == 2
    assert base.vectors is not None
    np.testing.assert_array_equal(base.vectors[2], new_item("img/2", 50).vector)
    np.testing.assert_array_equal(base.vectors[0], faiss_index.reconstruct(bundle.indices[Modality.IMAGE], 0))
    log.close()
    bundle.close()

"""The shards of an unfinished build: written atomically, read back in order, refused to another build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import ResumeMismatch
from clipsearch.ingest.shards import Shard, ShardStore, work_dir_for
from clipsearch.modality import Modality
from tests.support.reference import unit_vectors


def shard(first_id: int, count: int) -> Shard:
    ids = np.arange(first_id, first_id + count, dtype=np.int64)
    records = [{"id": int(item_id), "hash": f"h{item_id}", "problem": None} for item_id in ids]
    return Shard(ids, unit_vectors(count, seed=first_id), records)


def test_the_work_dir_is_a_hidden_sibling_of_the_bundle(tmp_path: Path) -> None:
    assert work_dir_for(tmp_path / "bundle") == tmp_path / ".bundle.partial"


def test_shards_read_back_as_written_and_in_order(tmp_path: Path) -> None:
    store = ShardStore.open(tmp_path / "bundle", {"model": "tiny"})
    written = [shard(0, 3), shard(3, 2)]
    for number, each in enumerate(written):
        store.write(Modality.IMAGE, number, each)
    read = list(store.read(Modality.IMAGE))
    assert [list(each.ids) for each in read] == [[0, 1, 2], [3, 4]]
    for found, expected in zip(read, written, strict=True):
        np.testing.assert_array_equal(found.vectors, expected.vectors)
        assert found.records == expected.records
    assert [list(ids) for ids in store.read_ids(Modality.IMAGE)] == [[0, 1, 2], [3, 4]]
    assert list(store.read(Modality.TEXT)) == []


def test_finished_counts_only_the_unbroken_run_from_the_first_shard(tmp_path: Path) -> None:
    store = ShardStore.open(tmp_path / "bundle", {})
    store.write(Modality.IMAGE, 0, shard(0, 1))
    store.write(Modality.IMAGE, 2, shard(2, 1))  # the Ray engine finishes shards in any order
    assert store.finished(Modality.IMAGE, 4) == 1
    assert store.written(Modality.IMAGE, 4) == {0, 2}


def test_content_hashes_map_each_hash_to_its_first_item_and_skip_problems(tmp_path: Path) -> None:
    store = ShardStore.open(tmp_path / "bundle", {})
    first = Shard(np.array([0], np.int64), unit_vectors(1), [{"id": 0, "hash": "same", "problem": None},
                                                              {"id": 1, "hash": "bad", "problem": "broken"}])
    second = Shard(np.array([2], np.int64), unit_vectors(1), [{"id": 2, "hash": "same", "problem": None}])
    store.write(Modality.IMAGE, 0, first)
    store.write(Modality.IMAGE, 1, second)
    assert store.content_hashes(Modality.IMAGE, 2) == {"same": 0}


def test_a_work_dir_of_a_build_with_other_settings_is_refused_naming_them(tmp_path: Path) -> None:
    ShardStore.open(tmp_path / "bundle", {"model": "tiny", "batch_size": 8})
    with pytest.raises(ResumeMismatch, match="different batch_size, workers"):
        ShardStore.open(tmp_path / "bundle", {"model": "tiny", "batch_size": 16, "workers": 2})
    again = ShardStore.open(tmp_path / "bundle", {"model": "tiny", "batch_size": 8})
    again.remove()
    assert not work_dir_for(tmp_path / "bundle").exists()

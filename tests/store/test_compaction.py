"""Compaction folds a live collection's changes into a new base: every id, key and vector kept,
the writes made meanwhile carried over, IVF indices refilled or trained again as the policy says,
and a kill -9 at any moment losing nothing acknowledged.

The bundles here are written directly from random unit vectors (no model): compaction never embeds.
The state machine in tests/store/test_live.py interleaves compactions with every other write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch.config import CompactionPolicy, ModelRef
from clipsearch.errors import BundleReplaced, CannotCompact, LiveChangesPending
from clipsearch.index import faiss_index
from clipsearch.index.spec import RECALL_TARGET
from clipsearch.modality import Modality
from clipsearch.store.bundle import LIVE_IMAGES, Bundle, ModalityContent, load_bundle, rewrite_items, write_bundle
from clipsearch.store.compaction import Compaction, compact
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem, count_live_changes
from tests.support.reference import assert_same_top_k, brute_force

DIM = 16
MODEL = ModelRef("synthetic")


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_bundle(path: Path, count: int, factory: str = "Flat", texts: int = 0) -> Path:
    """`count` image items (ids 0…count-1, uri img/N) and `texts` text items after them."""
    content, items = {}, []
    for modality, first, size in ((Modality.IMAGE, 0, count), (Modality.TEXT, count, texts)):
        if not size:
            continue
        ids = np.arange(first, first + size, dtype=np.int64)
        queries = unit_rows(200, 99)
        index, spec = faiss_index.build_index(unit_rows(size, first), ids, factory if modality is Modality.IMAGE
                                              else "Flat", queries, "synthetic")
        content[modality] = ModalityContent(index, spec)
        prefix = "img" if modality is Modality.IMAGE else "txt"
        items += [Item(int(item_id), modality, f"{prefix}/{item_id}", None, {"n": int(item_id)},
                       f"hash{item_id}") for item_id in ids]
    write_bundle(path, MODEL, DIM, content, items, {"skipped": []}, {})
    return path


def new_item(key: str, seed: int, modality: Modality = Modality.IMAGE, uri: str | None = None) -> NewItem:
    return NewItem(key, modality, uri or key, None, {"key": key}, f"hash-{key}", unit_rows(1, seed)[0])


class Collection:
    """The plain reference: id → (uri, extra, vector) of every item that should be there."""

    def __init__(self, bundle: Bundle) -> None:
        self.items: dict[int, tuple[Modality, str, dict[str, object], np.ndarray]] = {}
        for item in bundle.items:
            vector = faiss_index.reconstruct(bundle.indices[item.modality], item.id)
            assert vector is not None
            self.items[item.id] = (item.modality, item.uri, item.extra, vector)

    def write(self, log: LiveLog, items: list[NewItem]) -> list[int]:
        ids = log.write(items)
        for item_id, item in zip(ids, items, strict=True):
            self.items[item_id] = (item.modality, item.uri, item.extra, item.vector)
        return ids

    def delete(self, log: LiveLog, ids: list[int]) -> None:
        assert log.delete(ids) == ids
        for item_id in ids:
            del self.items[item_id]

    def assert_served_by(self, path: Path) -> None:
        """The bundle at `path` with its log holds exactly these items, and searches as brute force does."""
        bundle = load_bundle(path)
        log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
        try:
            state = log.state()
            for modality in Modality:
                expected = {item_id: entry for item_id, entry in self.items.items() if entry[0] is modality}
                base = bundle.indices.get(modality)
                base_ids = faiss_index.ids_of(base) if base is not None else np.zeros(0, np.int64)
                visible = set(np.setdiff1d(base_ids, state.removed_of(modality)).tolist()) | \
                    set(state.segment(modality).ids.tolist())
                assert visible == set(expected)
                for item_id, (_, uri, extra, vector) in expected.items():
                    item = state.items.get(item_id) or bundle.items.get(item_id)
                    assert item is not None and (item.uri, item.extra) == (uri, extra)
                    stored = state.segment(modality).vector(item_id)
                    if stored is None:
                        stored = faiss_index.reconstruct(bundle.indices[modality], item_id)
                    np.testing.assert_array_equal(stored, vector)
        finally:
            log.close()
            bundle.close()


@pytest.fixture()
def flat(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle", 200, texts=20)


def test_a_compaction_folds_every_change_in_keeping_ids_keys_and_vectors(flat: Path) -> None:
    bundle = load_bundle(flat)
    reference = Collection(bundle)
    log = LiveLog(flat / LIVE_FILE, bundle.items, DIM)
    added = reference.write(log, [new_item(f"new-{number}", number) for number in range(20)])
    replaced = reference.write(log, [new_item(f"img/{item_id}", 100 + item_id) for item_id in range(5)])
    reference.delete(log, list(range(10, 20)) + added[:3] + [205])
    log.close()
    bundle.close()

    summary = compact(flat)

    # Live items (17 added and kept, 5 replacements) and hidden base items (5 replaced, 11 deleted).
    assert summary is not None and summary.folded == 17 + 5 + 5 + 11 and summary.carried == 0
    assert summary.counts == {"image": 200 - 10 + 17, "text": 20 - 1}
    assert count_live_changes(flat) == 0
    reference.assert_served_by(flat)
    bundle = load_bundle(flat)
    log = LiveLog(flat / LIVE_FILE, bundle.items, DIM)
    try:
        assert log.key_of(added[5]) == "new-5" and log.key_of(replaced[0]) == "img/0"
        assert log.write([new_item("new-5", 7)]) == [added[5]]  # a key still names its item
        [fresh] = log.write([new_item("brand-new", 8)])
        assert fresh > max(added)  # ids are never reused
        assert bundle.manifest.compactions[-1]["folded"] == summary.folded
    finally:
        log.close()
        bundle.close()


def test_writes_made_while_the_new_base_is_built_are_carried_into_the_new_log(flat: Path) -> None:
    bundle = load_bundle(flat)
    reference = Collection(bundle)
    log = LiveLog(flat / LIVE_FILE, bundle.items, DIM)
    first = reference.write(log, [new_item(f"new-{number}", number) for number in range(6)])
    reference.delete(log, [30, 31])
    compaction = Compaction(flat)
    compaction.prepare()
    # Meanwhile: an add, an upsert of a folded item, deletes of a folded and a base item, and a
    # deleted folded item's key written again.
    reference.write(log, [new_item("late", 50), new_item("new-0", 51)])
    reference.delete(log, [first[1], 40])
    reference.write(log, [new_item("new-1", 52)])
    summary = compaction.commit()
    compaction.close()
    with pytest.raises(BundleReplaced):  # this handle's file was retired: writes to it are refused
        log.write([new_item("too-late", 53)])
    log.close()
    bundle.close()

    assert summary.carried == count_live_changes(flat) > 0
    reference.assert_served_by(flat)


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
    reference = Collection(bundle)
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


def _assert_exhaustive_search_equals_brute_force(path: Path, reference: Collection) -> None:
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


def test_uploaded_files_of_kept_items_stay_and_those_of_deleted_items_are_left_behind(flat: Path) -> None:
    uploads = flat.resolve() / LIVE_IMAGES
    uploads.mkdir()
    for name in ("kept.png", "deleted.png"):
        (uploads / name).write_bytes(name.encode())
    bundle = load_bundle(flat)
    log = LiveLog(flat / LIVE_FILE, bundle.items, DIM)
    kept, deleted = log.write([new_item("kept", 1, uri=str(uploads / "kept.png")),
                               new_item("deleted", 2, uri=str(uploads / "deleted.png"))])
    log.delete([deleted])
    log.close()
    bundle.close()

    compact(flat)

    assert sorted(path.name for path in uploads.iterdir()) == ["kept.png"]
    bundle = load_bundle(flat)
    item = bundle.items.get(kept)
    bundle.close()
    assert item is not None and Path(item.uri).read_bytes() == b"kept.png"  # its path still holds its file


def test_after_a_compaction_a_rebuild_still_refuses_to_drop_what_was_folded_but_relabelling_works(
        flat: Path) -> None:
    bundle = load_bundle(flat)
    log = LiveLog(flat / LIVE_FILE, bundle.items, DIM)
    [added] = log.write([new_item("new", 1)])
    log.close()
    bundle.close()
    compact(flat)

    with pytest.raises(LiveChangesPending, match="compacted or not"):
        write_bundle(flat, MODEL, DIM, {}, [], {"skipped": []}, {})
    rewrite_items(flat, lambda item: Item(item.id, item.modality, item.uri, item.text, {**item.extra, "label": 1},
                                          item.content_hash))
    bundle = load_bundle(flat)
    log = LiveLog(flat / LIVE_FILE, bundle.items, DIM)
    try:
        assert bundle.items.get(added) is not None and bundle.items.get(added).extra["label"] == 1  # type: ignore[union-attr]
        assert log.key_of(added) == "new"  # the log, with its keys, came along
    finally:
        log.close()
        bundle.close()


def test_a_swap_killed_half_way_is_put_back_by_the_next_compaction(flat: Path, tmp_path: Path) -> None:
    # Where directories cannot be exchanged, a swap renames the old bundle aside, then the new one
    # in: killed between the two, only the retired folder of a dead process is left.
    retired = flat.with_name(f".{flat.name}.retired-999999999")
    os.replace(flat, retired)
    compact(make_bundle(tmp_path / "other", 10))  # a compaction of another bundle leaves it alone
    assert retired.exists()
    summary = compact(flat)
    assert summary is not None and summary.folded == 0
    assert load_bundle(flat).manifest.model == MODEL and not retired.exists()


WRITER = """
import sys, numpy as np
from pathlib import Path
from clipsearch.store.bundle import load_bundle
from clipsearch.errors import BundleReplaced
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from clipsearch.modality import Modality
path, number = Path(sys.argv[1]), 0
rng = np.random.default_rng(0)
while True:
    bundle = load_bundle(path, verify_checksums=False)
    log = LiveLog(path / LIVE_FILE, bundle.items, {dim})
    try:
        while True:
            vector = rng.standard_normal({dim}).astype(np.float32)
            vector /= np.linalg.norm(vector)
            [item_id] = log.write([NewItem(f"w{{number}}", Modality.IMAGE, f"w{{number}}", None, {{}}, "h", vector)])
            print(item_id, vector.tobytes().hex(), flush=True)  # acknowledged
            number += 1
    except BundleReplaced:
        log.close()
        bundle.close()
"""


def test_kill_9_during_compactions_loses_no_acknowledged_write_and_leaves_a_bundle_that_loads(
        tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "bundle", 3000)
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(dim=DIM), str(path)], stdout=subprocess.PIPE,
                              text=True)
    acknowledged: dict[int, str] = {}

    def read_acknowledgements() -> None:
        assert writer.stdout is not None
        for line in writer.stdout:
            if not line.endswith("\n"):
                break  # the writer was killed part-way through printing: that write was never acknowledged
            item_id, vector = line.split()
            acknowledged[int(item_id)] = vector

    reader = threading.Thread(target=read_acknowledgements)
    reader.start()
    rng = np.random.default_rng(1)
    outcomes = []
    try:
        for _ in range(5):
            compactor = subprocess.Popen([sys.executable, "-m", "indexer", "compact", "--bundle", str(path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(float(rng.uniform(1.0, 9.0)))  # it starts in about 3 s and takes about 1 s
            compactor.send_signal(signal.SIGKILL)
            outcomes.append(compactor.wait())
        time.sleep(0.5)
    finally:
        writer.kill()
        writer.wait()
        reader.join()
        assert writer.stdout is not None
        writer.stdout.close()
    finished = len(load_bundle(path, verify_checksums=False).manifest.compactions)
    print("compactor exit codes (-9: killed):", outcomes, "compactions finished:", finished,
          "writes acknowledged:", len(acknowledged))
    assert acknowledged and -9 in outcomes

    compact(path)  # a compaction after the kills finishes and cleans up their debris
    assert not list(tmp_path.glob(".bundle.*-*"))
    bundle = load_bundle(path)  # checksums verified
    log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
    try:
        state = log.state()
        for item_id, vector in acknowledged.items():
            stored = state.segment(Modality.IMAGE).vector(item_id)
            if stored is None:
                stored = faiss_index.reconstruct(bundle.indices[Modality.IMAGE], item_id)
            assert stored is not None and stored.tobytes().hex() == vector
    finally:
        log.close()
        bundle.close()

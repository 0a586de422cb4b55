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

import pytest

from clipsearch.errors import BundleReplaced, LiveChangesPending, StorageFull
from clipsearch.index import faiss_index
from clipsearch.modality import Modality
from clipsearch.store.bundle import load_bundle, rewrite_items, write_bundle
from clipsearch.store.compaction import Compaction, compact
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LIVE_IMAGES, LiveLog, count_live_changes
from clipsearch.util.files import file_sha256
from tests.support.bundles import DIM, MODEL, ReferenceCollection, make_bundle, new_item
from tests.support.small_disk import FILLER, SmallDisk


@pytest.fixture()
def flat(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle", 200, texts=20)


def test_a_compaction_folds_every_change_in_keeping_ids_keys_and_vectors(flat: Path) -> None:
    bundle = load_bundle(flat)
    reference = ReferenceCollection(bundle)
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
    reference = ReferenceCollection(bundle)
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


KILL_POINTS = [("compaction:prepared", 0), ("compaction:staged", 0), ("compaction:carried", 0),
               ("compaction:swapped", 1)]
"""Each point a compaction is killed at, and the compactions it adds to the manifest (only the swap commits one)."""


def test_kill_9_at_each_step_of_a_compaction_loses_no_acknowledged_write_and_leaves_a_bundle_that_loads(
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

    def assert_every_acknowledged_write_is_served() -> None:
        seen = dict(acknowledged)  # those acknowledged by now are in the log or in the base
        bundle = load_bundle(path)  # checksums verified
        log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
        try:
            state = log.state()
            for item_id, vector in seen.items():
                stored = state.segment(Modality.IMAGE).vector(item_id)
                if stored is None:
                    stored = faiss_index.reconstruct(bundle.indices[Modality.IMAGE], item_id)
                assert stored is not None and stored.tobytes().hex() == vector
        finally:
            log.close()
            bundle.close()

    reader = threading.Thread(target=read_acknowledgements)
    reader.start()
    try:
        for point, committed in KILL_POINTS:
            while len(acknowledged) < 20:  # the compaction has writes to fold, and more come meanwhile
                time.sleep(0.05)
            before = len(load_bundle(path, verify_checksums=False).manifest.compactions)
            killed = subprocess.run([sys.executable, "-m", "indexer", "compact", "--bundle", str(path)],
                                    env={**os.environ, "CLIPSEARCH_KILL_AT": point}, capture_output=True, timeout=300)
            assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])  # it got there, and died
            after = len(load_bundle(path, verify_checksums=False).manifest.compactions)
            assert after - before == committed, point
            assert_every_acknowledged_write_is_served()
            acknowledged_before = len(acknowledged)
            while len(acknowledged) < acknowledged_before + 5:  # the writer goes on after each kill
                time.sleep(0.05)
    finally:
        writer.kill()
        writer.wait()
        reader.join()
        assert writer.stdout is not None
        writer.stdout.close()

    compact(path)  # a compaction after the kills finishes and cleans up their debris
    assert not list(tmp_path.glob(".bundle.*-*"))
    assert_every_acknowledged_write_is_served()


def _files_and_hashes(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): file_sha256(path) for path in sorted(directory.rglob("*"))
            if path.is_file()}


def test_a_compaction_that_meets_a_full_disk_changes_nothing_and_the_next_one_succeeds(disk: SmallDisk) -> None:
    path = make_bundle(disk.path / "bundle", 2000, texts=20)
    bundle = load_bundle(path)
    reference = ReferenceCollection(bundle)
    log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
    reference.write(log, [new_item(f"new-{number}", number) for number in range(300)])
    reference.delete(log, list(range(0, 100)))
    log.close()
    bundle.close()
    before = _files_and_hashes(path)
    disk.fill(leave_bytes=32 << 10)  # room for a little, not for a second copy of the index and the items

    with pytest.raises(StorageFull, match=f"no space left for the compaction at {path}: .* free of 16.0 MiB on "
                                          f"the filesystem at {disk.path}; the bundle and its live log are as "
                                          "they were"):
        compact(path)

    assert _files_and_hashes(path) == before
    assert [entry.name for entry in disk.path.iterdir()  # no staging folder, no new log
            if entry.name != FILLER and not entry.name.endswith(".lock")] == ["bundle"]
    reference.assert_served_by(path)
    disk.empty()
    summary = compact(path)
    assert summary is not None and summary.folded == 400 and count_live_changes(path) == 0
    reference.assert_served_by(path)

"""Snapshots: a live bundle archived while writes go on holds exactly the writes acknowledged before
it began (and perhaps some during, never a torn one), restores anywhere with its uploads found at
their new place, and a damaged or misplaced archive is refused, naming why."""

from __future__ import annotations

import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import SnapshotInvalid, StorageLocked
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.bundle.snapshot import restore_snapshot, take_snapshot
from clipsearch.store.manifest import bundle_lock
from tests.support.corpora import private_copy
from tests.support.imagefiles import image_bytes, noise_image


@pytest.fixture()
def served(encoder: ClipEncoder, bundle_path: Path, tmp_path: Path) -> Iterator[SearchService]:
    with opened_service(encoder, private_copy(bundle_path, tmp_path / "serving")) as opened:
        yield opened


def _live_ids(encoder: ClipEncoder, path: Path) -> set[int]:
    with opened_service(encoder, path) as restored:
        return set(restored.collection.refresh().items)


def test_a_snapshot_taken_during_writes_holds_every_write_acknowledged_before_it(
        served: SearchService, encoder: ClipEncoder, tmp_path: Path) -> None:
    writer = CollectionWriter(served)
    acknowledged: list[tuple[float, int]] = []
    stop = threading.Event()

    def keep_writing() -> None:
        number = 0
        while not stop.is_set():
            [item_id] = writer.add_texts([TextEntry(f"written while archiving, number {number}")])
            acknowledged.append((time.monotonic(), item_id))
            number += 1

    thread = threading.Thread(target=keep_writing)
    thread.start()
    while len(acknowledged) < 5:
        time.sleep(0.01)
    began = time.monotonic()
    info = take_snapshot(served.bundle.path, tmp_path / "snapshot.tar")
    ended = time.monotonic()
    while len(acknowledged) < len([1 for at, _ in acknowledged if at <= ended]) + 3:
        time.sleep(0.01)  # some writes land after it too, which it must not hold
    stop.set()
    thread.join()
    restored = restore_snapshot(info.path, tmp_path / "elsewhere" / "restored")
    held = _live_ids(encoder, restored)
    before = {item_id for at, item_id in acknowledged if at < began}
    after = {item_id for at, item_id in acknowledged if at > ended}
    assert before <= held and not held & after
    assert info.files >= 5 and info.bytes > 0 and info.locked_s < info.took_s


def test_a_restored_bundle_finds_its_uploaded_images_at_their_new_place(served: SearchService, encoder: ClipEncoder,
                                                                        tmp_path: Path) -> None:
    picture = image_bytes(noise_image(91))
    [added] = CollectionWriter(served).add_images([ImageEntry(picture, key="holiday/beach.png")])
    info = take_snapshot(served.bundle.path, tmp_path / "snapshot.tar")
    restored = restore_snapshot(info.path, tmp_path / "moved" / "bundle")
    with opened_service(encoder, restored) as service:
        path = service.collection.file_path(added)
        assert path.is_relative_to(restored.resolve()) and path.read_bytes() == picture
        assert service.search_image(picture, Modality.IMAGE, 1).hits[0].item.id == added
        np.testing.assert_allclose(service.collection.stored_vector(added), served.collection.stored_vector(added))


def test_restoring_over_an_existing_path_is_refused(served: SearchService, tmp_path: Path) -> None:
    info = take_snapshot(served.bundle.path, tmp_path / "snapshot.tar")
    with pytest.raises(SnapshotInvalid) as refused:
        restore_snapshot(info.path, served.bundle.path)
    assert refused.value.field == "bundle" and "exists already" in refused.value.reason


def test_a_damaged_archive_is_refused_naming_the_file_and_nothing_is_left(served: SearchService,
                                                                          tmp_path: Path) -> None:
    info = take_snapshot(served.bundle.path, tmp_path / "snapshot.tar")
    with tarfile.open(info.path) as archive:
        offset = archive.getmember("items.sqlite").offset_data
    damaged = bytearray(info.path.read_bytes())
    damaged[offset + 100] ^= 0xFF
    (tmp_path / "damaged.tar").write_bytes(bytes(damaged))
    with pytest.raises(SnapshotInvalid, match="items.sqlite does not match its checksum"):
        restore_snapshot(tmp_path / "damaged.tar", tmp_path / "restored")
    (tmp_path / "truncated.tar").write_bytes(info.path.read_bytes()[:5000])
    with pytest.raises(SnapshotInvalid, match="not a snapshot archive|files missing"):
        restore_snapshot(tmp_path / "truncated.tar", tmp_path / "restored")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["damaged.tar", "serving", "snapshot.tar",
                                                                 "truncated.tar"]


def test_an_archive_that_escapes_its_folder_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "evil.tar", "w") as archive:
        (tmp_path / "payload").write_text("x")
        archive.add(tmp_path / "payload", arcname="../../escaped")
    with pytest.raises(SnapshotInvalid, match="not a snapshot archive"):
        restore_snapshot(tmp_path / "evil.tar", tmp_path / "restored" / "bundle")
    assert not (tmp_path / "escaped").exists()


def test_a_snapshot_waits_for_a_change_under_way_and_gives_up_after_its_timeout(served: SearchService,
                                                                                 tmp_path: Path) -> None:
    with bundle_lock(served.bundle.path), pytest.raises(StorageLocked):
        take_snapshot(served.bundle.path, tmp_path / "snapshot.tar", lock_timeout_s=0.2)
    assert not (tmp_path / "snapshot.tar").exists()

"""Live collections: any sequence of adds, replacements by key, edits, deletes and restarts leaves
searches equal to brute force over exactly the live items, checked against a plain dict of them
(Hypothesis's stateful testing); plus the log's own guarantees."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from clipsearch.config import CompactionPolicy, QueryLimits, WriteLimits
from clipsearch.errors import (
    BundleReplaced,
    InvalidQuery,
    ItemNotFound,
    LiveChangesPending,
    StorageFull,
    StorageLocked,
    StorageUnwritable,
)
from clipsearch.index.topk import TopK
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import close_service, open_service
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.service import Answer, SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.bundle import Bundle, load_bundle, rewrite_items
from clipsearch.store.compaction import Compaction
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, count_live_changes
from clipsearch.store.manifest import bundle_lock
from tests.support.bundles import DIM, make_bundle, new_item
from tests.support.corpora import make_text_corpus, tiny_config
from tests.support.imagefiles import image_bytes, noise_image, picture_at, upload_path
from tests.support.reference import assert_same_top_k, brute_force, filter_matches
from tests.support.small_disk import SmallDisk

TEXTS = ["a red bicycle", "a dog on the beach", "snow on a mountain", "a cat asleep", "night in the city"]
KEYS = ["k1", "k2", "k3", "k4"]
TAGGED = {"key": "tag", "match": {"value": "a"}}


def open_writable(encoder: ClipEncoder, path: Path) -> tuple[Bundle, SearchService, CollectionWriter]:
    service = open_service(encoder, path, limits=QueryLimits(max_k=50))
    return service.bundle, service, CollectionWriter(service, WriteLimits(max_items=8))


def close_writable(bundle: Bundle, service: SearchService) -> None:
    assert service.bundle is bundle
    close_service(service)


@pytest.fixture()
def live_copy(bundle_path: Path, tmp_path: Path) -> Path:
    """A private copy of the session's bundle: live writes land beside it."""
    return Path(shutil.copytree(bundle_path, tmp_path / "bundle"))


class LiveCollectionMachine(RuleBasedStateMachine):
    """The service under test beside `model`: id → (item, vector) of every item that should be live."""

    encoder: ClipEncoder
    source: Path
    scratch: Path

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(shutil.copytree(self.source, self.scratch / f"bundle-{id(self)}"))
        self.bundle, self.service, self.writer = open_writable(self.encoder, self.path)
        self.model: dict[int, tuple[Item, np.ndarray]] = {}
        self.keys: dict[tuple[Modality, str], int] = {}
        self.queries = self.encoder.encode_texts(["a photo", "a red dog"])
        self.compaction: Compaction | None = None

    @initialize()
    def load_the_base(self) -> None:
        # The model's vectors are its own: each base item's source embedded here, once, not read back.
        items = list(self.bundle.items)
        texts = [item for item in items if item.modality is Modality.TEXT]
        images = [item for item in items if item.modality is Modality.IMAGE]
        vectors = [*self.encoder.encode_texts([item.text or "" for item in texts]),
                   *self.encoder.encode_images([picture_at(Path(item.uri)) for item in images])]
        for item, vector in zip([*texts, *images], vectors, strict=True):
            self.model[item.id] = (item, vector)
            self.keys[(item.modality, item.uri)] = item.id  # a base item's key is its uri

    @rule(text=st.sampled_from(TEXTS), key=st.one_of(st.none(), st.sampled_from(KEYS)),
          tag=st.sampled_from(["a", "b", None]))
    def add_a_text(self, text: str, key: str | None, tag: str | None) -> None:
        metadata = {} if tag is None else {"tag": tag}
        [item_id] = self.writer.add_texts([TextEntry(text, key, metadata)])
        if key is not None and (Modality.TEXT, key) in self.keys:
            assert item_id == self.keys[(Modality.TEXT, key)]  # a replacement keeps its id
        assert item_id not in self.model or key is not None
        vector = self.encoder.encode_texts([text])[0]
        stored_key = key if key is not None else self.writer.live.key_of(item_id)  # a new key: made by the log
        assert stored_key is not None
        self.keys[(Modality.TEXT, stored_key)] = item_id
        self.model[item_id] = (Item(item_id, Modality.TEXT, stored_key, text, metadata, ""), vector)  # uri: its key

    @rule(seed=st.integers(0, 5), key=st.one_of(st.none(), st.sampled_from(KEYS)))
    def add_an_image(self, seed: int, key: str | None) -> None:
        data = image_bytes(noise_image(4000 + seed))
        [item_id] = self.writer.add_images([ImageEntry(data, key, caption=f"noise {seed}", metadata={"tag": "a"})])
        vector = self.encoder.encode_images([noise_image(4000 + seed)])[0]
        stored_key = key if key is not None else self.writer.live.key_of(item_id)
        assert stored_key is not None
        self.keys[(Modality.IMAGE, stored_key)] = item_id
        # An upload is stored in the bundle under its content's hash.
        uri = upload_path(self.path, data)
        self.model[item_id] = (Item(item_id, Modality.IMAGE, uri, f"noise {seed}", {"tag": "a"}, ""), vector)

    @rule(data=st.data())
    def replace_a_base_item_by_its_key(self, data: st.DataObject) -> None:
        base_texts = [(key, item_id) for (modality, key), item_id in self.keys.items()
                      if modality is Modality.TEXT and key not in KEYS and item_id in self.model]
        if not base_texts:
            return
        key, item_id = data.draw(st.sampled_from(base_texts))
        [written] = self.writer.add_texts([TextEntry("a replaced sentence", key, {"tag": "b"})])
        assert written == item_id
        vector = self.encoder.encode_texts(["a replaced sentence"])[0]
        self.model[item_id] = (Item(item_id, Modality.TEXT, key, "a replaced sentence", {"tag": "b"}, ""), vector)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete_an_item(self, data: st.DataObject) -> None:
        item_id = data.draw(st.sampled_from(sorted(self.model)))
        assert self.writer.delete([item_id]) == [item_id]
        self._forget(item_id)
        assert self.writer.delete([item_id]) == []  # deleting again is a no-op
        with pytest.raises(ItemNotFound):
            self.service.collection.item(item_id)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), tag=st.sampled_from(["a", "b"]))
    def edit_metadata(self, data: st.DataObject, tag: str) -> None:
        item_id = data.draw(st.sampled_from(sorted(self.model)))
        self.writer.update(item_id, metadata={"tag": tag})
        item, vector = self.model[item_id]
        self.model[item_id] = (Item(item.id, item.modality, item.uri, item.text, {"tag": tag}, ""), vector)

    @rule()
    def delete_everything_tagged_b(self) -> None:
        raw = {"key": "tag", "match": {"value": "b"}}
        doomed = sorted(item_id for item_id, (item, _) in self.model.items() if filter_matches(raw, item))
        assert sorted(self.writer.delete_matching(parse_filter(raw))) == doomed
        for item_id in doomed:
            self._forget(item_id)

    def _forget(self, item_id: int) -> None:
        """A deleted item's key is free again: writing it later makes a new item with a new id."""
        del self.model[item_id]
        self.keys = {key: known for key, known in self.keys.items() if known != item_id}

    @rule()
    def restart(self) -> None:
        close_writable(self.bundle, self.service)
        self.bundle, self.service, self.writer = open_writable(self.encoder, self.path)

    @precondition(lambda self: self.compaction is None)
    @rule()
    def start_a_compaction(self) -> None:
        """Its first half: the new base is built from this snapshot, and the rules that run before
        `finish_the_compaction` are writes made meanwhile, which the new log must carry over."""
        self.compaction = Compaction(self.path, CompactionPolicy(retrain_fraction=0.5))
        self.compaction.prepare()

    @precondition(lambda self: self.compaction is not None)
    @rule()
    def let_the_compaction_catch_up(self) -> None:
        """Copies what was written so far into the new log; later writes must still reach it."""
        assert self.compaction is not None
        self.compaction.catch_up()

    @precondition(lambda self: self.compaction is not None)
    @rule()
    def finish_the_compaction(self) -> None:
        assert self.compaction is not None
        try:
            summary = self.compaction.commit()
        finally:
            self.compaction.close()
            self.compaction = None
        if summary.folded:  # the new log holds exactly what was written meanwhile
            assert count_live_changes(self.path) == summary.carried
        self.restart()  # what a server does when it sees the new bundle (app.state)

    @invariant()
    def searches_equal_brute_force_over_the_live_items(self) -> None:
        for target in Modality:
            for raw in (None, TAGGED):
                chosen = [(item_id, vector) for item_id, (item, vector) in self.model.items()
                          if item.modality is target and (raw is None or filter_matches(raw, item))]
                if not chosen and target not in self.service.modalities:
                    continue
                options = ResultOptions(filter=None if raw is None else parse_filter(raw))
                for query in self.queries:
                    answer = self.service.search_vector(_query(query), target, 12, options)
                    assert answer.matched == len(chosen)
                    found = _top_k(answer)
                    if chosen:
                        ids = np.array([item_id for item_id, _ in chosen])
                        expected = brute_force(np.stack([vector for _, vector in chosen]), ids, query,
                                               min(12, len(chosen)))
                        assert_same_top_k(expected, found)
                    else:
                        assert found.ids.size == 0

    @invariant()
    def a_snapshot_caught_up_incrementally_equals_one_read_whole(self) -> None:
        caught_up = self.service.collection.refresh()
        whole = self.writer.live.state()
        assert caught_up.generation == whole.generation and caught_up.items == whole.items
        for modality in Modality:
            np.testing.assert_array_equal(caught_up.removed_of(modality), whole.removed_of(modality))
            np.testing.assert_array_equal(caught_up.segment(modality).ids, whole.segment(modality).ids)
            np.testing.assert_array_equal(caught_up.segment(modality).vectors, whole.segment(modality).vectors)

    @invariant()
    def every_live_item_reads_back_as_written(self) -> None:
        keys = {item_id: key for (_, key), item_id in self.keys.items()}
        for item_id, (item, vector) in self.model.items():
            read = self.service.collection.item(item_id)
            assert (read.modality, read.uri, read.text, read.extra) == (item.modality, item.uri, item.text, item.extra)
            assert self.writer.live.key_of(item_id) == keys[item_id]
            np.testing.assert_allclose(self.service.collection.stored_vector(item_id), vector, atol=1e-5)
        assert set(keys) == set(self.model)  # every key names a live item, and every live item has one

    def teardown(self) -> None:
        if self.compaction is not None:
            self.compaction.close()
        close_writable(self.bundle, self.service)
        shutil.rmtree(self.path, ignore_errors=True)


def _query(vector: np.ndarray) -> QueryVector:
    return QueryVector(vector)


def _top_k(answer: Answer) -> TopK:
    return TopK(np.array([[hit.score for hit in answer.hits]], np.float32),
                np.array([[hit.item.id for hit in answer.hits]], np.int64))


def test_any_sequence_of_writes_leaves_searches_equal_to_brute_force(encoder: ClipEncoder, bundle_path: Path,
                                                                     tmp_path: Path) -> None:
    LiveCollectionMachine.encoder, LiveCollectionMachine.source, LiveCollectionMachine.scratch = \
        encoder, bundle_path, tmp_path
    run_state_machine_as_test(LiveCollectionMachine, settings=settings(
        max_examples=30, stateful_step_count=16, deadline=None, suppress_health_check=[HealthCheck.too_slow]))


def test_a_write_is_visible_to_another_service_on_the_same_files_at_its_next_search(
        encoder: ClipEncoder, live_copy: Path) -> None:
    # Two server workers are two services over the same bundle and log.
    first_bundle, first, writer = open_writable(encoder, live_copy)
    second_bundle, second, _ = open_writable(encoder, live_copy)
    try:
        [item_id] = writer.add_texts([TextEntry("a purple giraffe", "giraffe")])
        query = encoder.encode_texts(["a purple giraffe"])[0]
        assert second.search(query, Modality.TEXT, 1)[0].item.id == item_id
        writer.delete([item_id])
        assert item_id not in [hit.item.id for hit in second.search(query, Modality.TEXT, 5)]
    finally:
        close_writable(first_bundle, first)
        close_writable(second_bundle, second)


def test_a_search_keeps_the_snapshot_it_started_with(encoder: ClipEncoder, live_copy: Path) -> None:
    bundle, service, writer = open_writable(encoder, live_copy)
    try:
        scope = service.scope(Modality.TEXT, None)
        writer.add_texts([TextEntry("a purple giraffe")])
        assert len(scope.live_ids) == 0 and scope.matched == 25  # the old snapshot, whole
        assert service.scope(Modality.TEXT, None).matched == 26
    finally:
        close_writable(bundle, service)


def test_new_ids_never_reuse_a_deleted_one(encoder: ClipEncoder, live_copy: Path) -> None:
    bundle, service, writer = open_writable(encoder, live_copy)
    try:
        [first] = writer.add_texts([TextEntry("one")])
        writer.delete([first])
        [second] = writer.add_texts([TextEntry("two")])
        assert second > first > max(item.id for item in bundle.items)
    finally:
        close_writable(bundle, service)


def test_an_uploaded_image_is_stored_and_served_from_the_bundle(encoder: ClipEncoder, live_copy: Path) -> None:
    bundle, service, writer = open_writable(encoder, live_copy)
    try:
        data = image_bytes(noise_image(99))
        [item_id] = writer.add_images([ImageEntry(data, "holiday/1.png", "a caption", {"album": "x"})])
        path = service.collection.file_path(item_id)
        assert path.read_bytes() == data and path.parent == (live_copy / "live-images").resolve()
        assert service.search_image(data, Modality.IMAGE, 1).hits[0].item.id == item_id
    finally:
        close_writable(bundle, service)


@pytest.mark.parametrize(("entries", "field", "reason"), [
    ([], "items", "at least one"),
    ([TextEntry("x")] * 9, "items", "at most 8"),
    ([TextEntry("  ")], "items[0].text", "empty"),
    ([TextEntry("x", key="")], "items[0].key", "empty"),
    ([TextEntry("x", key="k" * 1025)], "items[0].key", "at most 1024"),
    ([TextEntry("x", metadata={"big": "x" * 70_000})], "items[0].metadata", "bytes"),
    ([TextEntry("x", key="a"), TextEntry("y", key="a")], "items[1].key", "repeats items[0].key"),
])
def test_a_bad_write_is_refused_whole_naming_the_field(encoder: ClipEncoder, live_copy: Path,
                                                        entries: list[TextEntry], field: str, reason: str) -> None:
    bundle, service, writer = open_writable(encoder, live_copy)
    try:
        before = writer.live.generation()
        with pytest.raises(InvalidQuery) as refused:
            writer.add_texts(entries)
        assert refused.value.field == field and reason in refused.value.reason
        assert writer.live.generation() == before  # nothing was written
    finally:
        close_writable(bundle, service)


def test_editing_a_texts_text_embeds_it_again_and_an_images_caption_does_not(encoder: ClipEncoder,
                                                                              live_copy: Path) -> None:
    bundle, service, writer = open_writable(encoder, live_copy)
    try:
        text_id = next(item.id for item in bundle.items if item.modality is Modality.TEXT)
        writer.update(text_id, text="an elephant in the rain")
        np.testing.assert_allclose(service.collection.stored_vector(text_id),
                                   encoder.encode_texts(["an elephant in the rain"])[0], atol=1e-5)
        image_id = next(item.id for item in bundle.items if item.modality is Modality.IMAGE)
        before = service.collection.stored_vector(image_id)
        edited = writer.update(image_id, caption="a new caption")
        assert edited.text == "a new caption" and edited.id == image_id
        np.testing.assert_array_equal(service.collection.stored_vector(image_id), before)
        with pytest.raises(InvalidQuery, match="caption"):
            writer.update(text_id, caption="no")
    finally:
        close_writable(bundle, service)


def test_a_rebuild_or_relabelling_refuses_to_drop_live_changes_unless_told(encoder: ClipEncoder,
                                                                           live_copy: Path) -> None:

    bundle, service, writer = open_writable(encoder, live_copy)
    writer.add_texts([TextEntry("kept safe")])
    close_writable(bundle, service)
    texts = make_text_corpus(live_copy.parent / "texts.txt", 3)
    with pytest.raises(LiveChangesPending, match="1 live changes"):
        build(tiny_config(live_copy, texts=texts))
    with pytest.raises(LiveChangesPending):
        rewrite_items(live_copy, lambda item: item)
    assert (live_copy / LIVE_FILE).is_file()  # nothing was replaced
    build(tiny_config(live_copy, texts=texts, discard_live_changes=True))
    assert not (live_copy / LIVE_FILE).exists()


def test_a_server_whose_bundle_was_rebuilt_under_it_refuses_writes(encoder: ClipEncoder, live_copy: Path) -> None:

    bundle, service, writer = open_writable(encoder, live_copy)
    try:
        build(tiny_config(live_copy, texts=make_text_corpus(live_copy.parent / "texts.txt", 3)))  # no changes yet
        with pytest.raises(BundleReplaced, match="restart the server"):
            writer.add_texts([TextEntry("would be lost")])
    finally:
        close_writable(bundle, service)


def test_writes_until_the_disk_is_full_are_kept_and_the_refused_one_leaves_nothing(disk: SmallDisk) -> None:
    bundle = load_bundle(make_bundle(disk.path / "bundle", 20))
    log = LiveLog(bundle.path / LIVE_FILE, bundle.items, DIM)
    try:
        disk.fill(leave_bytes=256 << 10)
        acknowledged: dict[int, str] = {}
        with pytest.raises(StorageFull, match=f"no space left for writing to the live log at {log.path}: 0 B free"):
            for batch in range(10_000):  # each batch of 50 is about 10 KiB: the disk fills long before the end
                items = [new_item(f"k{batch}-{number}", batch * 50 + number) for number in range(50)]
                acknowledged.update(zip(log.write(items), (item.key for item in items), strict=True))
        state = log.state()
        assert acknowledged and {item_id: item.uri for item_id, item in state.items.items()} == acknowledged
        generation = state.generation
        disk.empty()
        [written] = log.write([new_item("after", 1)])  # the same log, with room again
        assert log.state().generation == generation + 1 and written not in acknowledged
    finally:
        log.close()
        bundle.close()
    reopened = load_bundle(disk.path / "bundle")
    try:
        state = LiveLog(reopened.path / LIVE_FILE, reopened.items, DIM).state()
        assert set(acknowledged) | {written} == set(state.items)
    finally:
        reopened.close()


@pytest.mark.parametrize("holder", ["the bundle's lock", "SQLite's write lock"])
def test_a_write_waits_for_a_lock_held_elsewhere_only_up_to_its_timeout(tmp_path: Path, holder: str) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "bundle", 5))
    log = LiveLog(bundle.path / LIVE_FILE, bundle.items, DIM, lock_timeout_s=0.2)
    other = sqlite3.connect(log.path, isolation_level=None)
    try:
        with ExitStack() as held:
            if holder == "the bundle's lock":
                held.enter_context(bundle_lock(bundle.path))  # another open file: flock excludes it
            else:
                other.execute("BEGIN IMMEDIATE")
                held.callback(other.execute, "ROLLBACK")
            started = time.monotonic()
            with pytest.raises(StorageLocked, match="retry shortly"):
                log.write([new_item("waits", 1)])
            assert 0.2 <= time.monotonic() - started < 5
        assert log.state().items == {}  # nothing of it was written
        assert len(log.write([new_item("waits", 1)])) == 1  # the lock released, the same write goes through
    finally:
        other.close()
        log.close()
        bundle.close()


KILLED_WRITER = """
import os, sys
from pathlib import Path
from clipsearch.store.bundle import load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog
from tests.support.bundles import DIM, new_item
bundle = load_bundle(Path(sys.argv[1]))
log = LiveLog(bundle.path / LIVE_FILE, bundle.items, DIM)
print(log.write([new_item("before-the-kill", 1)])[0], flush=True)
os._exit(0)  # no close, no checkpoint: the commit is in the WAL only
"""


@pytest.mark.parametrize("writer", ["closed", "killed"])
def test_a_log_on_a_read_only_filesystem_is_read_with_every_commit_and_refuses_writes(disk: SmallDisk,
                                                                                     writer: str) -> None:
    path = make_bundle(disk.path / "bundle", 5)
    if writer == "killed":
        child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[3], check=True)
        written = int(child.stdout)
        assert (path / f"{LIVE_FILE}-wal").stat().st_size > 0
    else:
        bundle = load_bundle(path)
        log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
        [written] = log.write([new_item("before-the-remount", 1)])
        log.close()
        bundle.close()
        assert not (path / f"{LIVE_FILE}-wal").exists()
    disk.read_only()
    bundle = load_bundle(path)
    with ExitStack() as closing:
        closing.callback(bundle.close)
        if writer == "killed":
            # SQLite opens a log it finds with its WAL read-only by itself, and refuses the first write
            opened = LiveLog(path / LIVE_FILE, bundle.items, DIM)
            closing.callback(opened.close)
            with pytest.raises(StorageUnwritable, match="the filesystem is read-only"):
                opened.write([new_item("refused", 2)])
        else:  # one closed cleanly cannot even be opened
            with pytest.raises(StorageUnwritable, match="the filesystem is read-only"):
                LiveLog(path / LIVE_FILE, bundle.items, DIM)
        reader = LiveLog(path / LIVE_FILE, bundle.items, DIM, writable=False)
        assert set(reader.state().items) == {written}
        with pytest.raises(StorageUnwritable, match="opened read-only"):
            reader.write([new_item("refused", 2)])
        reader.close()  # a mode=ro reader in this process would keep the file read-only for its other connections
        disk.writable()
        if writer == "killed":  # the same log writes again once the filesystem can be written
            assert len(opened.write([new_item("after-the-remount", 3)])) == 1

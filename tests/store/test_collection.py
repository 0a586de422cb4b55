"""A collection: a bundle's items and vectors by id, with its live log's changes applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery, ItemNotFound
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.collection import Collection
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from tests.support.corpora import private_copy
from tests.support.reference import stored_vectors, unit_vectors


def test_items_and_vectors_come_from_the_bundle(bundle: Bundle) -> None:
    collection = Collection(bundle)
    ids, vectors = stored_vectors(bundle, Modality.IMAGE)
    np.testing.assert_array_equal(collection.stored_vectors(Modality.IMAGE, ids[::-1]), vectors[::-1])
    np.testing.assert_array_equal(collection.stored_vector(int(ids[2])), vectors[2])
    assert collection.item(int(ids[0])).modality is Modality.IMAGE
    assert collection.modalities == {Modality.IMAGE, Modality.TEXT}


def test_an_unknown_id_is_an_item_not_found_naming_the_field(bundle: Bundle) -> None:
    with pytest.raises(ItemNotFound) as raised:
        Collection(bundle).item(10**9, "terms[0].item_id")
    assert raised.value.field == "terms[0].item_id"


def test_only_image_items_have_an_image(bundle: Bundle) -> None:
    text_id = int(stored_vectors(bundle, Modality.TEXT)[0][0])
    with pytest.raises(InvalidQuery, match="is a text, not an image"):
        Collection(bundle).file_path(text_id)


def test_live_adds_and_deletes_are_counted_and_resolved(bundle_path: Path, tmp_path: Path) -> None:
    path = private_copy(bundle_path, tmp_path)
    bundle = load_bundle(path)
    live = LiveLog(path / LIVE_FILE, bundle.items, bundle.manifest.embedding_dim)
    try:
        collection = Collection(bundle, live)
        before = collection.count(Modality.TEXT)
        text_ids = stored_vectors(bundle, Modality.TEXT)[0]
        vector = unit_vectors(1, dim=bundle.manifest.embedding_dim, seed=9)[0]
        [added] = live.write([NewItem("new", Modality.TEXT, "new", "a new text", {}, "h", vector)])
        live.delete([int(text_ids[0])])
        collection.refresh()
        assert collection.count(Modality.TEXT) == before  # one in, one out
        assert collection.item(added).text == "a new text"
        np.testing.assert_array_equal(collection.stored_vector(added), vector)
        with pytest.raises(ItemNotFound):
            collection.item(int(text_ids[0]))
        found = [TopK(np.array([[0.9, 0.5, 0.1]], np.float32), np.array([[added, text_ids[1], -1]], np.int64))]
        hits = collection.hits(found)[0]  # a live item, a base item, and an empty slot (-1), left out
        assert [(hit.item.id, hit.score) for hit in hits] == [(added, pytest.approx(0.9)), (text_ids[1], 0.5)]
    finally:
        live.close()
        bundle.close()


def test_videos_and_sounds_are_counted_each_as_items_of_their_own_modality(tmp_path: Path) -> None:
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
    from clipsearch.ingest.build import build
    from tests.support.corpora import tiny_config
    from tests.support.sounds import TONES
    from tests.support.videos import SCENE_COLOURS, write_scenes

    videos = tmp_path / "videos"
    videos.mkdir()
    write_scenes(videos / "talk.mp4", [(SCENE_COLOURS[0], 2.0), (SCENE_COLOURS[1], 2.0)], sound=[(TONES[0], 4.0)])
    write_scenes(videos / "silent.mp4", [(SCENE_COLOURS[2], 2.0)])
    build(tiny_config(tmp_path / "out", videos=videos, sound=AudioSampling(model=OFFLINE_AUDIO_MODEL,
                                                                            video_sound=True)))
    bundle = load_bundle(tmp_path / "out")
    try:
        collection = Collection(bundle)
        # Counted once each (the base never changes), and never one for the other.
        assert [collection.count(Modality.VIDEO), collection.count(Modality.AUDIO)] == [2, 1]
        assert [collection.count(Modality.AUDIO), collection.count(Modality.VIDEO)] == [1, 2]
    finally:
        bundle.close()


def test_videos_one_vectors_read_together_are_each_the_unit_mean_of_its_segments(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from clipsearch.ingest.build import build
    from clipsearch.store.segments import segment_ids, with_spans
    from tests.support.corpora import tiny_config
    from tests.support.videos import SCENE_COLOURS, write_scenes

    videos = tmp_path / "videos"
    videos.mkdir()
    for number, scenes in enumerate((1, 3, 2)):
        write_scenes(videos / f"{number}.mp4", [(SCENE_COLOURS[number + scene], 1.0) for scene in range(scenes)])
    build(tiny_config(tmp_path / "out", videos=videos))
    bundle = load_bundle(tmp_path / "out")
    live = LiveLog(tmp_path / "out" / LIVE_FILE, bundle.items, bundle.manifest.embedding_dim)
    try:
        base = sorted(item.id for item in bundle.items)
        written = {}
        for number, count in enumerate((4, 1)):
            rows = unit_vectors(count, dim=bundle.manifest.embedding_dim, seed=number)
            spans = [(float(at), float(at + 1)) for at in range(count)]
            [item_id] = live.write([NewItem(f"live{number}", Modality.VIDEO, f"live{number}.mp4", None,
                                            with_spans({}, {"duration_s": float(count)}, spans), "h", rows)])
            written[item_id] = rows
        live.delete([base[0]])
        collection = Collection(bundle, live)

        def reference(item_id: int) -> np.ndarray:  # the mean of the item's segments, of unit length
            rows = written.get(item_id)
            if rows is None:
                count = len(bundle.items.get(item_id).extra["video"]["segments"])  # type: ignore[union-attr]
                rows = bundle.base_vectors(Modality.VIDEO, segment_ids(item_id, count))
            mean = rows.astype(np.float64).mean(axis=0)
            return (mean / np.linalg.norm(mean)).astype(np.float32)

        # Live and base items mixed, in the order asked, a base one twice.
        live_ids = sorted(written, reverse=True)
        asked = np.array([*live_ids, base[2], base[1], base[2]], dtype=np.int64)
        found = collection.stored_vectors(Modality.VIDEO, asked)
        np.testing.assert_allclose(found, np.stack([reference(int(item_id)) for item_id in asked]), atol=1e-6)
        np.testing.assert_allclose(found[-1], collection.timed_vector(base[2]), atol=1e-6)
        with pytest.raises(ItemNotFound):  # deleted
            collection.stored_vectors(Modality.VIDEO, np.array([base[1], base[0]], dtype=np.int64))
        assert collection.stored_vectors(Modality.VIDEO, np.zeros(0, dtype=np.int64)).shape == \
            (0, bundle.manifest.embedding_dim)
    finally:
        live.close()
        bundle.close()

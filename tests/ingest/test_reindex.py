"""Reindexing with another model: every item kept as it was (ids, uris, texts, metadata, uploads) with
the new model's vectors, writes made meanwhile carried over and embedded again, the old bundle kept;
a rollback puts it back exactly, and refuses while it would drop writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL
from clipsearch.errors import CannotReindex
from clipsearch.ingest.reindex import Reindex, forget_previous, previous_path, reindex, rollback
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.search.open import opened_service
from clipsearch.search.writes import CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.bundle import load_bundle
from clipsearch.store.items import Item
from clipsearch.store.manifest import read_manifest
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.reference import stored_vectors


@pytest.fixture(scope="module")
def other_encoder() -> ClipEncoder:
    return load_encoder(MULTILINGUAL_OFFLINE_MODEL, pretrained=None, device="cpu")


@pytest.fixture()
def live_bundle(bundle_path: Path, tmp_path: Path, encoder: ClipEncoder) -> Path:
    """The test bundle with live changes: a text added, an image uploaded, a base text edited, a base image deleted."""
    path = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    with opened_service(encoder, path) as service:
        writer = CollectionWriter(service)
        writer.add_texts([TextEntry("a live note about the sea", key="note", metadata={"tag": "live"})])
        writer.add_images([ImageEntry(image_bytes(noise_image(101)), key="upload.png", caption="an upload")])
        writer.update(40, text="an edited text")
        writer.delete([3])
    return path


def items_of(path: Path, encoder: ClipEncoder) -> dict[int, Item]:
    """Every item of the collection now: the base's not hidden, and the live ones."""
    with opened_service(encoder, path) as service:
        state = service.collection.refresh()
        items = {item.id: item for item in service.bundle.items if not state.is_removed(item.id)}
        return {**items, **state.items}


def test_every_item_is_kept_with_the_new_models_vector_and_the_old_bundle_kept(
        live_bundle: Path, encoder: ClipEncoder, other_encoder: ClipEncoder) -> None:
    before = items_of(live_bundle, encoder)
    summary = reindex(live_bundle, other_encoder)
    assert summary.counts == {"image": 30, "text": 26} and summary.carried == 0  # one image deleted, one uploaded
    manifest = read_manifest(live_bundle)
    assert manifest.model == other_encoder.ref and manifest.compactions[-1]["kind"] == "reindex"
    assert items_of(live_bundle, other_encoder) == before  # ids, uris, texts and metadata, uploads included
    bundle = load_bundle(live_bundle)
    try:
        for modality in (Modality.IMAGE, Modality.TEXT):  # the bundle's; videos: the test at the end
            ids, vectors = stored_vectors(bundle, modality)
            items = [bundle.items.get(int(item_id)) for item_id in ids]
            expected = other_encoder.encode_texts([item.text or "" for item in items if item is not None]) \
                if modality is Modality.TEXT else \
                np.stack([other_encoder.encode_images([_image(item.uri)])[0] for item in items if item is not None])
            np.testing.assert_allclose(vectors, expected, atol=1e-4)
    finally:
        bundle.close()
    assert read_manifest(previous_path(live_bundle)).model == encoder.ref  # kept for a rollback


def test_writes_made_during_the_reindex_are_carried_over_embedded_by_the_new_model(
        live_bundle: Path, encoder: ClipEncoder, other_encoder: ClipEncoder) -> None:
    reindexing = Reindex(live_bundle, other_encoder)
    try:
        reindexing.prepare()
        with opened_service(encoder, live_bundle) as service:  # a server writing meanwhile, with the old model
            writer = CollectionWriter(service)
            [during] = writer.add_texts([TextEntry("written while reindexing", key="during")])
            writer.delete([0])
            writer.update(41, metadata={"edited": True})
        reindexing.commit()
    finally:
        reindexing.close()
    with opened_service(other_encoder, live_bundle) as service:
        found = service.collection.item(during)
        assert found.text == "written while reindexing"
        assert service.collection.item(41).extra == {"edited": True}
        vector = service.collection.stored_vector(during)
    assert 0 not in items_of(live_bundle, other_encoder)
    np.testing.assert_allclose(vector, other_encoder.encode_texts(["written while reindexing"])[0], atol=1e-5)


def test_a_rollback_puts_the_old_bundle_back_and_refuses_to_drop_writes_made_since(
        live_bundle: Path, encoder: ClipEncoder, other_encoder: ClipEncoder) -> None:
    before_manifest = (live_bundle / "manifest.json").read_text()
    reindex(live_bundle, other_encoder)
    assert rollback(live_bundle).model == encoder.ref
    assert (live_bundle / "manifest.json").read_text() == before_manifest
    assert read_manifest(previous_path(live_bundle)).model == other_encoder.ref  # a second rollback rolls forward
    assert rollback(live_bundle).model == other_encoder.ref
    with opened_service(other_encoder, live_bundle) as service:
        CollectionWriter(service).add_texts([TextEntry("after the switch")])
    with pytest.raises(CannotReindex, match="written to 1 times since the switch"):
        rollback(live_bundle)
    assert read_manifest(live_bundle).model == other_encoder.ref
    assert rollback(live_bundle, discard_live_changes=True).model == encoder.ref
    assert forget_previous(live_bundle) and not previous_path(live_bundle).exists()
    with pytest.raises(CannotReindex, match="nothing to roll back to"):
        rollback(live_bundle)


def test_what_cannot_be_reindexed_is_refused_and_nothing_changes(live_bundle: Path, encoder: ClipEncoder,
                                                                 other_encoder: ClipEncoder) -> None:
    with pytest.raises(CannotReindex, match="built with tiny"):
        reindex(live_bundle, encoder)
    image = Path(next(item.uri for item in items_of(live_bundle, encoder).values() if item.modality is Modality.IMAGE))
    manifest = (live_bundle / "manifest.json").read_text()
    image.rename(image.with_suffix(".gone"))  # a file of the shared test corpus: put back below
    try:
        with pytest.raises(CannotReindex, match="1 items cannot be embedded again: item 0"):
            reindex(live_bundle, other_encoder)
    finally:
        image.with_suffix(".gone").rename(image)
    assert (live_bundle / "manifest.json").read_text() == manifest and not previous_path(live_bundle).exists()
    assert not [path for path in live_bundle.parent.iterdir() if ".newlog-" in path.name or ".staging-" in path.name]


def _image(uri: str):  # type: ignore[no-untyped-def]
    from PIL import Image

    with Image.open(uri) as image:
        return image.convert("RGB")


def test_videos_are_cut_as_before_and_each_segment_embedded_by_the_new_model(
        tmp_path: Path, encoder: ClipEncoder, other_encoder: ClipEncoder) -> None:
    pytest.importorskip("av")
    from clipsearch.ingest.build import build
    from clipsearch.store import segments
    from clipsearch.util.video import read_video
    from tests.support.corpora import tiny_config
    from tests.support.videos import SCENE_COLOURS, four_scenes, write_scenes

    videos = tmp_path / "videos"
    videos.mkdir()
    four_scenes(videos / "four.mp4")
    build(tiny_config(tmp_path / "bundle", videos=videos))
    upload = write_scenes(tmp_path / "upload.mkv", [(SCENE_COLOURS[4], 1.0), (SCENE_COLOURS[5], 1.0)],
                          container="matroska")
    with opened_service(encoder, tmp_path / "bundle") as service:
        [uploaded] = CollectionWriter(service).add_images([ImageEntry(upload.read_bytes(), key="upload")])
    summary = reindex(tmp_path / "bundle", other_encoder, progress=False)
    assert summary.counts == {"video": 2}
    with opened_service(other_encoder, tmp_path / "bundle") as service:
        for item_id, source in ((0, videos / "four.mp4"), (uploaded, upload)):
            ids, vectors = service.collection.segment_vectors(item_id)
            expected = other_encoder.encode_images([segment.frame for segment in read_video(source).segments])
            assert ids.tolist() == segments.segment_ids(item_id, len(expected)).tolist()
            np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_sounds_keep_their_windows_vectors_the_audio_model_is_not_the_one_replaced(
        tmp_path: Path, encoder: ClipEncoder, other_encoder: ClipEncoder) -> None:
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
    from clipsearch.ingest.build import build
    from tests.support.corpora import make_image_corpus, tiny_config
    from tests.support.sounds import NOISE, TONES, three_parts, write_sound

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    three_parts(sounds / "three.wav")
    build(tiny_config(tmp_path / "bundle", audio=sounds, images=make_image_corpus(tmp_path / "images", 3),
                      sound=AudioSampling(model=OFFLINE_AUDIO_MODEL)))
    upload = write_sound(tmp_path / "upload.flac", [(TONES[2], 3.0), (NOISE, 3.0)], kind="flac")
    with opened_service(encoder, tmp_path / "bundle") as service:
        [uploaded] = CollectionWriter(service).add_images([ImageEntry(upload.read_bytes(), key="upload")])
        before = {item_id: service.collection.segment_vectors(item_id) for item_id in (3, uploaded)}
    summary = reindex(tmp_path / "bundle", other_encoder, progress=False)
    assert summary.counts == {"image": 3, "audio": 2}
    with opened_service(other_encoder, tmp_path / "bundle") as service:
        for item_id, (ids, vectors) in before.items():
            kept_ids, kept = service.collection.segment_vectors(item_id)
            assert kept_ids.tolist() == ids.tolist()
            np.testing.assert_array_equal(kept, vectors)
        assert service.search_text("a whistle", Modality.AUDIO, 5).hits[0].segment is not None

"""Writes to a live collection: checked whole first, embedded by the service's model, committed at once."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import QueryLimits, WriteLimits
from clipsearch.errors import InvalidQuery, ModelLoadError, StorageFull, StorageLocked
from clipsearch.modality import Modality
from clipsearch.model import ocr
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.filters import parse_filter
from tests.support.corpora import private_copy
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.small_disk import SmallDisk


@pytest.fixture()
def service(encoder: ClipEncoder, bundle_path: Path, tmp_path: Path) -> Iterator[SearchService]:
    with opened_service(encoder, private_copy(bundle_path, tmp_path), limits=QueryLimits(max_text_chars=50)) as opened:
        yield opened


@pytest.fixture()
def writer(service: SearchService) -> CollectionWriter:
    return CollectionWriter(service, WriteLimits(max_items=3, max_key_chars=10, max_metadata_bytes=40))


def test_added_texts_hold_the_models_vectors_and_a_key_replaces_keeping_the_id(
        writer: CollectionWriter, service: SearchService, encoder: ClipEncoder) -> None:
    [first, other] = writer.add_texts([TextEntry("a red bicycle", "bike"), TextEntry("a dog")])
    np.testing.assert_allclose(service.collection.stored_vector(first), encoder.encode_texts(["a red bicycle"])[0],
                               atol=1e-5)
    [again] = writer.add_texts([TextEntry("a blue bicycle", "bike", {"colour": "blue"})])
    assert again == first and service.collection.item(first).text == "a blue bicycle"
    assert service.collection.item(other).uri.startswith("live:")


def test_an_added_image_is_stored_by_its_content_and_found_by_itself(writer: CollectionWriter,
                                                                     service: SearchService) -> None:
    picture = image_bytes(noise_image(77))
    [added] = writer.add_images([ImageEntry(picture, caption="noise")])
    stored = Path(service.collection.item(added).uri)
    assert stored.read_bytes() == picture and stored.parent.name == "live-images"
    assert service.search_image(picture, Modality.IMAGE, 1).hits[0].item.id == added


@pytest.mark.parametrize(("entries", "field", "reason"), [
    ([], "items", "at least one"),
    ([TextEntry("a")] * 4, "items", "at most 3 items"),
    ([TextEntry("a", " ")], "items[0].key", "empty"),
    ([TextEntry("a", "k" * 11)], "items[0].key", "at most 10 characters"),
    ([TextEntry("a", "k"), TextEntry("b", "k")], "items[1].key", "repeats items[0].key"),
    ([TextEntry("a", metadata={"note": "x" * 40})], "items[0].metadata", "at most 40 bytes"),
    ([TextEntry("a"), TextEntry("x" * 51)], "items[1].text", "at most 50"),
])
def test_a_bad_entry_is_refused_naming_it_and_nothing_is_written(writer: CollectionWriter, service: SearchService,
                                                                 entries: list[TextEntry], field: str,
                                                                 reason: str) -> None:
    generation = service.collection.live.generation() if service.collection.live else None
    with pytest.raises(InvalidQuery) as raised:
        writer.add_texts(entries)
    assert raised.value.field == field and reason in raised.value.reason
    assert service.collection.live is not None and service.collection.live.generation() == generation


def test_an_edited_text_is_embedded_again_and_a_caption_is_only_for_images(
        writer: CollectionWriter, service: SearchService, encoder: ClipEncoder) -> None:
    [text_id] = writer.add_texts([TextEntry("before")])
    edited = writer.update(text_id, text="after", metadata={"edited": True})
    assert (edited.text, edited.extra) == ("after", {"edited": True})
    np.testing.assert_allclose(service.collection.stored_vector(text_id), encoder.encode_texts(["after"])[0],
                               atol=1e-5)
    with pytest.raises(InvalidQuery) as raised:
        writer.update(text_id, caption="a caption")
    assert raised.value.field == "caption"


def test_deletes_are_idempotent_and_by_filter_reach_both_modalities(writer: CollectionWriter,
                                                                   service: SearchService) -> None:
    [first, second] = writer.add_texts([TextEntry("one", metadata={"tag": "gone"}),
                                        TextEntry("two", metadata={"tag": "kept"})])
    assert writer.delete([first, first, 10**9]) == [first]
    assert writer.delete([first]) == []
    [image] = writer.add_images([ImageEntry(image_bytes(noise_image(5)), metadata={"tag": "gone"})])
    [third] = writer.add_texts([TextEntry("three", metadata={"tag": "gone"})])
    assert sorted(writer.delete_matching(parse_filter({"key": "tag", "match": {"value": "gone"}}, "filter"))) == \
        sorted([image, third])
    assert service.collection.item(second).text == "two"


def test_an_upload_refused_at_its_commit_leaves_no_file_behind_but_one_committed_keeps_it(
        encoder: ClipEncoder, bundle_path: Path, tmp_path: Path) -> None:
    with opened_service(encoder, private_copy(bundle_path, tmp_path), lock_timeout_s=0.1) as service:
        writer = CollectionWriter(service)
        kept, refused = image_bytes(noise_image(5)), image_bytes(noise_image(6))
        [kept_id] = writer.add_images([ImageEntry(kept)])
        uploads = Path(service.collection.item(kept_id).uri).parent
        other = sqlite3.connect(service.collection.live.path, isolation_level=None)  # type: ignore[union-attr]
        other.execute("BEGIN IMMEDIATE")  # another process writing: the commit waits, then is refused
        with pytest.raises(StorageLocked):
            writer.add_images([ImageEntry(refused), ImageEntry(kept)])  # stores one new file, finds the other
        other.execute("ROLLBACK")
        assert sorted(path.name for path in uploads.iterdir()) == [Path(service.collection.item(kept_id).uri).name]


def test_an_upload_on_a_full_disk_is_refused_naming_the_folder_and_stores_nothing(
        encoder: ClipEncoder, bundle_path: Path, disk: SmallDisk) -> None:
    with opened_service(encoder, private_copy(bundle_path, disk.path)) as service:
        writer = CollectionWriter(service)
        count = service.collection.count(Modality.IMAGE)
        disk.fill()
        with pytest.raises(StorageFull, match=f"no space left for storing an uploaded image at "
                                              f"{disk.path / 'bundle' / 'live-images'}: 0 B free"):
            writer.add_images([ImageEntry(image_bytes(noise_image(7)))])
        assert service.collection.count(Modality.IMAGE) == count
        assert not any((disk.path / "bundle" / "live-images").glob("*"))
        disk.empty()
        [added] = writer.add_images([ImageEntry(image_bytes(noise_image(7)))])
        assert service.collection.count(Modality.IMAGE) == count + 1
        assert Path(service.collection.item(added).uri).is_file()


def test_without_the_ocr_extra_images_written_to_a_collection_that_reads_text_are_refused_and_nothing_written(
        encoder: ClipEncoder, ocr_bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if the [ocr] extra were missing
    monkeypatch.setattr(ocr, "_readers", {})  # nor loaded before in this process
    with opened_service(encoder, private_copy(ocr_bundle_path, tmp_path), limits=QueryLimits(max_k=20)) as service:
        writer = CollectionWriter(service, WriteLimits())
        before = service.collection.count(Modality.IMAGE)
        with pytest.raises(ModelLoadError, match=r"built with --ocr.*\[ocr\] extra.*nothing was written") as refused:
            writer.add_images([ImageEntry(image_bytes(noise_image(3)))])
        assert refused.value.field == "files"
        assert service.collection.count(Modality.IMAGE) == before
        [added] = writer.add_texts([TextEntry("texts are written as ever")])
        assert service.collection.item(added, "id").text == "texts are written as ever"


def test_a_sound_written_to_a_collection_built_without_sounds_is_refused_naming_its_file(
        writer: CollectionWriter, service: SearchService, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from tests.support.sounds import TONES, write_sound

    sound = write_sound(tmp_path / "tone.wav", [(TONES[1], 2.0)]).read_bytes()
    before = service.collection.refresh().generation
    with pytest.raises(InvalidQuery, match="built without sounds") as refused:
        writer.add_images([ImageEntry(image_bytes(noise_image(7))), ImageEntry(sound)], "file")
    assert refused.value.field == "file[1]" and service.collection.refresh().generation == before


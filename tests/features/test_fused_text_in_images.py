"""Fusion with the text read in images: each sign searched by its picture, its caption and what it
says, against the fused score worked by hand from the bundle's own items (the picture standing in
for a text an image lacks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from PIL import Image

from clipsearch.config import OcrConfig
from clipsearch.errors import IndexSettingsInvalid
from clipsearch.index import faiss_index
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from clipsearch.ingest.sync import SyncSources, sync
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry
from clipsearch.store.bundle import load_bundle
from clipsearch.store.compaction import compact
from clipsearch.store.items import Item
from clipsearch.store.ocr_text import readable_text
from tests.support.corpora import private_copy, tiny_config
from tests.support.fused_collection import FusedCollectionMachine
from tests.support.imagefiles import image_bytes, noise_image, save, words_picture
from tests.support.reference import FusedModel, assert_ranked_as, fused_scores_by_hand

WEIGHTS = Fusion(0.5, 0.2, 0.3)
"""The weights read_fused_bundle_path (tests/conftest.py) is built with."""


@pytest.fixture()
def service(encoder: ClipEncoder, read_fused_bundle_path: Path, tmp_path: Path) -> Iterator[SearchService]:
    with opened_service(encoder, private_copy(read_fused_bundle_path, tmp_path)) as opened:
        yield opened


def _model(encoder: ClipEncoder, service: SearchService, items: list[Item]) -> FusedModel:
    """Every image's caption and read text embedded here, from the items as stored, beside its image
    vector as stored (a JPEG's is embedded from a reduced draft): the fusion is under test, not the
    reading nor the decoding."""
    model: FusedModel = {}
    for item in items:
        texts = {"caption": item.text, "ocr": readable_text(item.extra)}
        model[item.id] = (service.collection.stored_vector(item.id),
                          {part: encoder.encode_texts([text])[0] for part, text in texts.items() if text})
    return model


def _images(service: SearchService) -> list[Item]:
    """The image items live now: the base's not hidden or replaced, and the live ones."""
    state = service.collection.refresh()
    return [*(item for item in service.bundle.items if item.modality is Modality.IMAGE
              and not state.is_removed(item.id) and item.id not in state.items),
            *(state.items[int(item_id)] for item_id in state.segment(Modality.IMAGE).ids)]


def test_the_build_stores_the_vector_of_each_images_read_text_beside_its_captions(read_fused_bundle_path: Path,
                                                                                 encoder: ClipEncoder) -> None:
    bundle = load_bundle(read_fused_bundle_path)
    try:
        assert bundle.manifest.fusion == pytest.approx({"image": 0.5, "caption": 0.2, "ocr": 0.3})
        assert {"caption.faiss", "ocr.faiss"} <= set(bundle.manifest.files) and set(bundle.texts) == {"caption", "ocr"}
        showing = [item for item in bundle.items if readable_text(item.extra)]
        assert len(showing) == 12 and faiss_index.ids_of(bundle.texts["ocr"]).tolist() == [item.id for item in showing]
        stored = faiss_index.reconstruct_many(bundle.texts["ocr"], np.array([item.id for item in showing]))
        assert stored == pytest.approx(encoder.encode_texts([readable_text(item.extra) for item in showing]),
                                       abs=1e-5)
        assert len(faiss_index.ids_of(bundle.texts["caption"])) == 6
    finally:
        bundle.close()


@pytest.mark.parametrize("weights", [None, {"ocr": 1.0}, {"image": 1.0, "caption": 1.0}, {"caption": 1, "ocr": 3}])
def test_a_search_ranks_signs_by_picture_caption_and_read_text_as_worked_by_hand(
        service: SearchService, encoder: ClipEncoder, weights: dict[str, float] | None) -> None:
    fusion = WEIGHTS if weights is None else Fusion.of(weights).laid_out_as(WEIGHTS)
    options = ResultOptions(fusion=None if weights is None else Fusion.of(weights))
    model = _model(encoder, service, _images(service))
    for text in ("grand opening", "photo number 4", "优惠"):
        answer = service.search_text(text, Modality.IMAGE, 8, options=options)
        assert_ranked_as(answer.hits, fused_scores_by_hand(model, encoder.encode_texts([text])[0], fusion.as_dict()), 8)
        for hit in answer.hits:  # what each part adds sums to the score, and names only the texts it has
            assert hit.fused is not None and sum(hit.fused.values()) == pytest.approx(hit.score, abs=1e-5)
            assert set(hit.fused) <= {"image", *(part for part in model[hit.item.id][1] if fusion.weight(part) > 0)}


def test_weighing_the_read_text_alone_finds_each_sign_by_all_it_says(service: SearchService) -> None:
    for item in _images(service):
        said = readable_text(item.extra)
        hits = service.search_text(said, Modality.IMAGE, 1, options=ResultOptions(fusion=Fusion.of({"ocr": 1}))).hits
        assert [hit.item.id for hit in hits] == [item.id], said
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_a_live_image_gets_the_vector_of_what_it_says_and_keeps_it_through_edits_and_compaction(
        encoder: ClipEncoder, read_fused_bundle_path: Path, tmp_path: Path) -> None:
    path = private_copy(read_fused_bundle_path, tmp_path)
    with opened_service(encoder, path) as service:
        writer = CollectionWriter(service)
        [added] = writer.add_images([ImageEntry(image_bytes(words_picture("Fresh bread")), caption="a bakery")])
        item = service.collection.item(added)
        assert readable_text(item.extra).lower() == "fresh bread"
        said = encoder.encode_texts([readable_text(item.extra)])[0]
        assert service.collection.text_vectors(added)["ocr"] == pytest.approx(said, abs=1e-5)
        writer.update(added, caption="a shop front")  # a new caption: only the caption is embedded again
        assert service.collection.text_vectors(added)["ocr"] == pytest.approx(said, abs=1e-5)
        assert service.collection.text_vectors(added)["caption"] == pytest.approx(
            encoder.encode_texts(["a shop front"])[0], abs=1e-5)
        writer.update(added, metadata={"album": "town"})  # the read text stays with the new metadata
        assert service.collection.text_vectors(added)["ocr"] == pytest.approx(said, abs=1e-5)
        model = _model(encoder, service, _images(service))
        hits = service.search_text("bread", Modality.IMAGE, 13).hits
        assert_ranked_as(hits, fused_scores_by_hand(model, encoder.encode_texts(["bread"])[0], WEIGHTS.as_dict()), 13)
    compact(path)
    compacted = load_bundle(path)
    try:
        assert faiss_index.reconstruct(compacted.texts["ocr"], added) == pytest.approx(said, abs=1e-5)
        assert len(faiss_index.ids_of(compacted.texts["ocr"])) == 13
    finally:
        compacted.close()


def test_a_sync_embeds_what_new_images_say(encoder: ClipEncoder, tmp_path: Path) -> None:
    images = tmp_path / "images"
    save(images / "menu.png", image_bytes(words_picture("Pumpkin soup")))
    build(tiny_config(tmp_path / "bundle", images=images, ocr=OcrConfig(), fuse=Fusion(0.5, None, 0.5)))
    save(images / "new.png", image_bytes(words_picture("Closing sale")))
    with opened_service(encoder, tmp_path / "bundle") as service:
        assert service.collection.live is not None
        summary = sync(service.bundle, service.collection.live, encoder, SyncSources(images), progress=False)
        assert summary.added == 1
        state = service.collection.refresh()
        [new] = [item_id for item_id, item in state.items.items() if item.uri.endswith("new.png")]
        assert service.collection.text_vectors(new, state) == {"ocr": pytest.approx(
            encoder.encode_texts(["Closing sale"])[0], abs=1e-5)}


def test_fusing_read_text_needs_the_text_read_and_a_text_named(tmp_path: Path) -> None:
    save(tmp_path / "images" / "a.png", image_bytes(words_picture("Sale")))
    with pytest.raises(IndexSettingsInvalid, match="--ocr"):
        build(tiny_config(tmp_path / "out", images=tmp_path / "images", fuse=Fusion(0.5, None, 0.5)))
    with pytest.raises(IndexSettingsInvalid, match="caption, ocr or both"):
        build(tiny_config(tmp_path / "out", images=tmp_path / "images", fuse=Fusion(1.0)))
    assert not (tmp_path / "out").exists()


SAYINGS = ["Grand opening", "出口", "Fresh bread", None]
"""What the pictures a model-based run adds say (None: a picture with no text)."""


def _saying(seed: int) -> Image.Image:
    said = SAYINGS[seed % len(SAYINGS)]
    return noise_image(seed) if said is None else words_picture(said, font="NotoSansCJK-Regular.ttc")


class ReadFusedCollectionMachine(FusedCollectionMachine):
    """FusedCollectionMachine on a collection that fuses the read text too: added pictures say
    something or nothing, and every search ranks as the model's three-part scores."""

    weights = (WEIGHTS, Fusion(0.1, 0.1, 0.8), Fusion(0.5, 0.5, 0.0))
    picture = staticmethod(_saying)


def test_a_collection_fused_with_read_text_under_any_changes_ranks_as_the_model(encoder: ClipEncoder,
                                                                                 tmp_path: Path) -> None:
    images = tmp_path / "images"
    for seed in range(6):  # PNGs: the model embeds the same pixels the build did
        save(images / f"picture-{seed}.png", image_bytes(_saying(seed)))
        if seed % 3 == 0:
            (images / f"picture-{seed}.txt").write_text(f"a caption {seed}")
    build(tiny_config(tmp_path / "bundle", images=images, ocr=OcrConfig(threads=2), fuse=WEIGHTS))
    ReadFusedCollectionMachine.encoder, ReadFusedCollectionMachine.source = encoder, tmp_path / "bundle"
    ReadFusedCollectionMachine.scratch = tmp_path
    run_state_machine_as_test(ReadFusedCollectionMachine, settings=settings(
        max_examples=8, stateful_step_count=8, deadline=None, suppress_health_check=list(HealthCheck)))

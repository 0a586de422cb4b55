"""Item-side fusion: images searched by image and caption, against the fused score worked by hand
(w_image · cos(q, image) + w_caption · cos(q, caption), the image standing in for a missing caption).
The same with the text read in images as a third part: tests/features/test_fused_text_in_images.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from PIL import Image

from clipsearch.errors import IndexSettingsInvalid, InvalidQuery
from clipsearch.index import faiss_index
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from clipsearch.ingest.sync import SyncSources, sync
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.open import close_service, open_service, opened_service
from clipsearch.search.query import ResultOptions, TextTerm
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry
from clipsearch.store.bundle import FUSED_FILE, Bundle, load_bundle
from clipsearch.store.compaction import compact
from clipsearch.store.filters import parse_filter
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from tests.support.corpora import make_image_corpus, private_copy, tiny_config
from tests.support.fused_collection import FusedCollectionMachine
from tests.support.imagefiles import image_bytes, noise_image, picture_at, save
from tests.support.reference import FusedModel, assert_ranked_as, fused_scores_by_hand, unit_vectors

DEFAULT = Fusion(0.7, 0.3)


@pytest.fixture()
def live_path(fused_bundle_path: Path, tmp_path: Path) -> Path:
    return private_copy(fused_bundle_path, tmp_path)


@pytest.fixture()
def service(encoder: ClipEncoder, live_path: Path) -> Iterator[SearchService]:
    with opened_service(encoder, live_path) as opened:
        yield opened


def _embedded(encoder: ClipEncoder, images: list[tuple[int, Image.Image, str | None]]) -> FusedModel:
    """Each image and caption embedded here, once: never read back from the service under test."""
    pictures = encoder.encode_images([picture for _, picture, _ in images])
    return {item_id: (vector, {} if caption is None else {"caption": encoder.encode_texts([caption])[0]})
            for (item_id, _, caption), vector in zip(images, pictures, strict=True)}


def _base_images(bundle: Bundle) -> list[tuple[int, Image.Image, str | None]]:
    """The bundle's images as its item store lists them: id, the picture at its uri, its caption."""
    return [(item.id, picture_at(Path(item.uri)), item.text) for item in bundle.items
            if item.modality is Modality.IMAGE]


def _by_hand(model: FusedModel, query: np.ndarray, fusion: Fusion) -> dict[int, float]:
    """Every image's fused score: w_image · cos(q, image) + w_caption · cos(q, caption), the image alone
    where there is no caption."""
    return fused_scores_by_hand(model, query, fusion.as_dict())


def test_a_fused_build_stores_each_captioned_images_caption_vector(fused_bundle_path: Path,
                                                                   encoder: ClipEncoder) -> None:
    bundle = load_bundle(fused_bundle_path)
    try:
        assert bundle.manifest.fusion == pytest.approx({"image": 0.7, "caption": 0.3})
        assert "caption.faiss" in bundle.manifest.files and set(bundle.texts) == {"caption"}
        captioned = [item for item in bundle.items if item.text]
        held = bundle.texts["caption"]
        assert faiss_index.ids_of(held).tolist() == [item.id for item in captioned] and len(captioned) == 8
        stored = faiss_index.reconstruct_many(held, np.array([item.id for item in captioned]))
        assert stored == pytest.approx(encoder.encode_texts([item.text or "" for item in captioned]), abs=1e-5)
    finally:
        bundle.close()


def test_fusion_needs_images(tmp_path: Path) -> None:
    (tmp_path / "texts.txt").write_text("a\nb\n")
    with pytest.raises(IndexSettingsInvalid, match="--images"):
        build(tiny_config(tmp_path / "out", texts=tmp_path / "texts.txt", fuse=DEFAULT))


@pytest.fixture(scope="module")
def ivf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fused-ivf")
    make_image_corpus(root / "images", 24)
    out = root / "bundle"
    build(tiny_config(out, images=root / "images", fuse=DEFAULT, index_factory="IVF2,Flat"))
    return out


def _probing_every_list(encoder: ClipEncoder, path: Path) -> SearchService:
    service = open_service(encoder, path)
    assert service.bundle.fused_index is not None
    faiss_index.apply_params(service.bundle.fused_index, {"nprobe": 2})  # every list: the IVF answer is exact
    return service


def test_an_approximate_image_index_gets_a_fused_index_of_the_same_kind(ivf_path: Path, encoder: ClipEncoder) -> None:
    bundle = load_bundle(ivf_path)
    try:
        spec = bundle.manifest.fused_index
        assert spec is not None and spec.factory == "IVF2,Flat" and not spec.exact
        assert FUSED_FILE in bundle.manifest.files
        assert bundle.fused_index is not None and bundle.fused_index.d == 2 * encoder.embedding_dim
        assert faiss_index.ids_of(bundle.fused_index).tolist() == faiss_index.ids_of(
            bundle.indices[Modality.IMAGE]).tolist()
    finally:
        bundle.close()


@pytest.mark.parametrize("fusion", [DEFAULT, Fusion(0.2, 0.8)])
def test_an_ivf_fused_search_scores_as_the_exact_one(ivf_path: Path, tmp_path: Path, encoder: ClipEncoder,
                                                     fusion: Fusion) -> None:
    service = _probing_every_list(encoder, private_copy(ivf_path, tmp_path))
    try:
        query = encoder.encode_texts(["caption of picture 6"])[0]
        expected = _by_hand(_embedded(encoder, _base_images(service.bundle)), query, fusion)
        answer = service.search_text("caption of picture 6", Modality.IMAGE, 8, options=ResultOptions(fusion=fusion))
        assert_ranked_as(answer.hits, expected, 8)
        only = ResultOptions(fusion=fusion, filter=parse_filter({"key": "number", "range": {"lte": 12}}))
        filtered = service.search_text("caption of picture 6", Modality.IMAGE, 8, options=only)
        numbers = {item.id: item.extra.get("number", 99) for item in service.bundle.items}
        assert_ranked_as(filtered.hits, {item_id: score for item_id, score in expected.items()
                                       if numbers[item_id] <= 12}, 8)
    finally:
        close_service(service)


def test_compaction_refills_the_fused_index_with_live_images(ivf_path: Path, tmp_path: Path,
                                                             encoder: ClipEncoder) -> None:
    copy = private_copy(ivf_path, tmp_path)
    service = _probing_every_list(encoder, copy)
    try:
        CollectionWriter(service).add_images([ImageEntry(image_bytes(noise_image(31)), caption="a green kite")])
    finally:
        close_service(service)
    compact(copy)
    service = _probing_every_list(encoder, copy)
    try:
        assert service.bundle.manifest.fused_index is not None
        assert len(faiss_index.ids_of(service.bundle.fused_index)) == 25
        query = encoder.encode_texts(["a green kite"])[0]
        answer = service.search_text("a green kite", Modality.IMAGE, 10)
        # The compacted base lists the added image (and its caption) among its own.
        assert_ranked_as(answer.hits, _by_hand(_embedded(encoder, _base_images(service.bundle)), query, DEFAULT), 10)
    finally:
        close_service(service)


def test_a_text_search_ranks_images_by_the_fused_score(service: SearchService, encoder: ClipEncoder) -> None:
    answer = service.search_text("caption of picture 9", Modality.IMAGE, 10)
    query = encoder.encode_texts(["caption of picture 9"])[0]
    assert_ranked_as(answer.hits, _by_hand(_embedded(encoder, _base_images(service.bundle)), query, DEFAULT), 10)
    for hit in answer.hits:  # what each part adds sums to the score; an uncaptioned image is its image alone
        assert hit.fused is not None and sum(hit.fused.values()) == pytest.approx(hit.score, abs=1e-5)
        assert set(hit.fused) == ({"image", "caption"} if hit.item.text else {"image"})


@pytest.mark.parametrize("weights", [{"image": 1.0}, {"caption": 1.0}, {"image": 0.5, "caption": 0.5}])
def test_a_query_may_weigh_image_and_caption_its_own_way(service: SearchService, encoder: ClipEncoder,
                                                         weights: dict[str, float]) -> None:
    fusion = Fusion.of(weights)
    answer = service.search_text("caption of picture 3", Modality.IMAGE, 8, options=ResultOptions(fusion=fusion))
    model = _embedded(encoder, _base_images(service.bundle))
    expected = _by_hand(model, encoder.encode_texts(["caption of picture 3"])[0], fusion)
    assert_ranked_as(answer.hits, expected, 8)


def test_image_and_composed_queries_are_fused_too(service: SearchService, encoder: ClipEncoder) -> None:
    model = _embedded(encoder, _base_images(service.bundle))
    picture = noise_image(1234)
    by_image = service.search_image(image_bytes(picture), Modality.IMAGE, 5)
    assert_ranked_as(by_image.hits, _by_hand(model, encoder.encode_images([picture])[0], DEFAULT), 5)
    query = service.embed_terms([TextTerm("caption of picture 6"), TextTerm("noise", 0.5)])
    composed = service.search_vector(query, Modality.IMAGE, 5)
    assert_ranked_as(composed.hits, _by_hand(model, query.vector, DEFAULT), 5)
    shares = service.term_shares(query, composed.hits, DEFAULT)
    assert shares.sum(axis=1) == pytest.approx([hit.score for hit in composed.hits], abs=1e-5)


def test_a_filtered_fused_search_equals_the_fused_scores_of_the_matching_items(service: SearchService,
                                                                                encoder: ClipEncoder) -> None:
    raw = {"key": "number", "range": {"lte": 12}}
    answer = service.search_text("caption of picture 3", Modality.IMAGE, 10, options=ResultOptions(
        filter=parse_filter(raw)))
    matching = {item.id for item in service.bundle.items if item.extra.get("number", 99) <= 12}
    expected = {item_id: score for item_id, score in _by_hand(_embedded(encoder, _base_images(service.bundle)),
                                                              encoder.encode_texts(["caption of picture 3"])[0],
                                                              DEFAULT).items()
                if item_id in matching}
    assert len(answer.hits) == len(matching) == 5
    assert_ranked_as(answer.hits, expected, 10)


def test_live_images_are_fused_and_a_new_caption_reembeds_only_the_caption(service: SearchService,
                                                                           encoder: ClipEncoder) -> None:
    writer = CollectionWriter(service)
    [added] = writer.add_images([ImageEntry(image_bytes(noise_image(777)), key="new", caption="a red zeppelin")])
    query = encoder.encode_texts(["a red zeppelin"])[0]
    state = service.collection.refresh()
    assert service.collection.text_vectors(added, state)["caption"] == pytest.approx(query, abs=1e-5)
    answer = service.search_text("a red zeppelin", Modality.IMAGE, 30)
    model = _embedded(encoder, [*_base_images(service.bundle), (added, noise_image(777), "a red zeppelin")])
    assert_ranked_as(answer.hits, _by_hand(model, query, DEFAULT), 30)
    image_before = service.collection.stored_vector(added)
    writer.update(added, caption="a blue submarine")
    assert service.collection.stored_vector(added) == pytest.approx(image_before)
    assert service.collection.text_vectors(added)["caption"] == pytest.approx(
        encoder.encode_texts(["a blue submarine"])[0], abs=1e-5)
    captioned_base = next(item for item in service.bundle.items if item.text)
    kept = service.collection.text_vectors(captioned_base.id)["caption"]
    writer.update(captioned_base.id, metadata={"album": "x"})  # metadata only: the caption's vector stays
    assert service.collection.text_vectors(captioned_base.id)["caption"] == pytest.approx(kept)
    writer.update(captioned_base.id, caption=None)  # no caption: the image stands alone
    assert service.collection.text_vectors(captioned_base.id) == {}


def test_fusion_is_refused_for_text_results_and_for_bundles_without_captions(service: SearchService,
                                                                            bundle: Bundle,
                                                                            encoder: ClipEncoder) -> None:
    with pytest.raises(InvalidQuery, match="image and video results only"):
        service.fusion_for(Modality.TEXT, ResultOptions(fusion=DEFAULT))
    plain = SearchService(encoder, bundle)
    try:
        with pytest.raises(InvalidQuery, match="--fuse") as raised:
            plain.search_text("a", Modality.IMAGE, 3, options=ResultOptions(fusion=DEFAULT))
        assert raised.value.field == "fusion"
        assert plain.search_text("a", Modality.IMAGE, 3).hits[0].fused is None
    finally:
        plain.close()


def test_a_hybrid_search_fuses_the_fused_vector_ranking(service: SearchService, encoder: ClipEncoder) -> None:
    answer = service.search_text("caption picture 9", Modality.IMAGE, 5, ranking=Ranking(SearchMode.HYBRID))
    vector = service.search_text("caption picture 9", Modality.IMAGE, 50)
    ranks = {hit.item.id: rank for rank, hit in enumerate(vector.hits, 1)}
    assert all(hit.ranks is not None and hit.ranks.get("vector") == ranks.get(hit.item.id) for hit in answer.hits)


def test_compaction_keeps_every_caption_vector(encoder: ClipEncoder, live_path: Path) -> None:
    bundle = load_bundle(live_path)
    log = LiveLog(live_path / LIVE_FILE, bundle.items, encoder.embedding_dim)
    base_captioned = [item.id for item in bundle.items if item.text]
    vector, caption = unit_vectors(2, encoder.embedding_dim, seed=9)
    [added] = log.write([NewItem("k", Modality.IMAGE, "/x.png", "a caption", {}, "h", vector, {"caption": caption})])
    log.delete([base_captioned[0]])
    log.close()
    bundle.close()
    compact(live_path)
    compacted = load_bundle(live_path)
    try:
        held = compacted.texts["caption"]
        assert faiss_index.ids_of(held).tolist() == sorted([*base_captioned[1:], added])
        assert faiss_index.reconstruct(held, added) == pytest.approx(caption)
    finally:
        compacted.close()


def test_a_fused_collection_under_any_changes_ranks_as_the_model(encoder: ClipEncoder, fused_bundle_path: Path,
                                                                 tmp_path: Path) -> None:
    FusedCollectionMachine.encoder, FusedCollectionMachine.source = encoder, fused_bundle_path
    FusedCollectionMachine.scratch = tmp_path
    run_state_machine_as_test(FusedCollectionMachine, settings=settings(
        max_examples=12, stateful_step_count=10, deadline=None, suppress_health_check=list(HealthCheck)))


def test_a_sync_embeds_the_captions_of_new_and_recaptioned_images(encoder: ClipEncoder, tmp_path: Path) -> None:
    images = make_image_corpus(tmp_path / "images", 6)
    path = tmp_path / "bundle"
    build(tiny_config(path, images=images, fuse=DEFAULT))
    old = next(picture for picture in sorted(images.rglob("*.png")) if picture.with_suffix(".txt").exists())
    old.with_suffix(".txt").write_text("a purple umbrella")
    new = save(images / "added.png", image_bytes(noise_image(4242)))
    new.with_suffix(".txt").write_text("a yellow balloon")
    with opened_service(encoder, path) as service:
        assert service.collection.live is not None
        summary = sync(service.bundle, service.collection.live, encoder, SyncSources(images), progress=False)
        assert summary.added == 1 and summary.updated == 1
        state = service.collection.refresh()
        by_uri = {item.uri: item_id for item_id, item in state.items.items()}
        for picture, caption in ((new, "a yellow balloon"), (old, "a purple umbrella")):
            assert service.collection.text_vectors(by_uri[str(picture.resolve())], state)["caption"] == pytest.approx(
                encoder.encode_texts([caption])[0], abs=1e-5)

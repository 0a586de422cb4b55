from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchClient, Query
from clipsearch.index import faiss_index
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.store.bundle import Bundle
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.reference import brute_force_bundle
from tests.support.serving import serve


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def test_text_to_image_equals_exact_search(client: ClipSearchClient, bundle: Bundle, encoder: ClipEncoder) -> None:
    result = client.search_text("a photo of noise", k=7)
    expected = brute_force_bundle(bundle, Modality.IMAGE, encoder.encode_texts(["a photo of noise"])[0], 7)
    assert result.ids == expected.ids[0].tolist()
    assert all(hit.modality is Modality.IMAGE for hit in result.results)
    assert [hit.score for hit in result.results] == sorted((hit.score for hit in result.results), reverse=True)
    assert result.took_ms > 0 and result.truncated == []


def test_text_to_text_finds_the_identical_sentence_first(client: ClipSearchClient) -> None:
    result = client.search_text("a sentence about thing number 7", target="text", k=3)
    assert result.results[0].text == "a sentence about thing number 7"
    assert result.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_image_to_image_finds_the_same_picture_first(client: ClipSearchClient, corpus_dir: Path) -> None:
    picture = corpus_dir / "images" / "picture_000.png"
    result = client.search_image(picture, k=5)
    assert result.results[0].uri == str(picture.resolve())
    assert result.results[0].caption == "caption of picture 0"
    assert result.results[0].metadata == {"number": 0}


def test_image_to_text_equals_exact_search(client: ClipSearchClient, bundle: Bundle, encoder: ClipEncoder) -> None:
    image = noise_image(77)
    result = client.search_image(image_bytes(image), target="text", k=5)
    assert result.ids == brute_force_bundle(bundle, Modality.TEXT, encoder.encode_images([image])[0], 5).ids[0].tolist()


def test_a_composed_query_searches_the_renormalised_weighted_sum(client: ClipSearchClient, bundle: Bundle,
                                                                  encoder: ClipEncoder) -> None:
    image = noise_image(5)
    result = client.search([Query(item_id=3, weight=1.0), Query(text="at night", weight=0.8),
                            Query(image=image_bytes(image), weight=-0.5)], k=6)
    expected = unit(bundle.indices[Modality.IMAGE].reconstruct(3) + 0.8 * encoder.encode_texts(["at night"])[0]
                    - 0.5 * encoder.encode_images([image])[0])
    assert result.ids == brute_force_bundle(bundle, Modality.IMAGE, expected, 6).ids[0].tolist()


def test_one_composed_term_equals_the_plain_search(client: ClipSearchClient) -> None:
    plain = client.search_text("a sentence", target="text", k=5)
    composed = client.search([Query(text="a sentence", weight=2.5)], target="text", k=5)
    assert composed.ids == plain.ids


def test_a_negative_weight_steers_away_from_the_term(client: ClipSearchClient) -> None:
    towards = client.search([Query(text="a sentence about thing number 4")], target="text", k=1)
    away = client.search([Query(text="a sentence about thing number 4", weight=-1)], target="text", k=1)
    assert towards.results[0].text == "a sentence about thing number 4"
    assert away.results[0].id != towards.results[0].id


def test_text_longer_than_the_context_is_truncated_and_said_so(client: ClipSearchClient) -> None:
    result = client.search_text("many words " * 100)
    assert result.truncated == ["text"] and len(result.results) == 10
    composed = client.search([Query(item_id=1), Query(text="many words " * 100)])
    assert composed.truncated == ["queries[1].text"]


def test_k_larger_than_the_corpus_returns_every_item(client: ClipSearchClient) -> None:
    assert len(client.search_text("anything", target="text", k=50).results) == 25


def test_embeddings_match_the_model_in_process(client: ClipSearchClient, encoder: ClipEncoder) -> None:
    np.testing.assert_allclose(client.embed_text("a red bicycle"), encoder.encode_texts(["a red bicycle"])[0],
                               atol=1e-5)
    image = noise_image(3)
    np.testing.assert_allclose(client.embed_image(image_bytes(image)), encoder.encode_images([image])[0], atol=1e-5)


def test_many_parallel_requests_all_get_their_own_correct_answer(client: ClipSearchClient, server_url: str) -> None:
    texts = [f"a sentence about thing number {number % 25}" for number in range(64)]
    expected = {text: client.search_text(text, target="text", k=3).ids for text in set(texts)}
    images = [image_bytes(noise_image(number)) for number in range(8)]
    expected_images = {number: client.search_image(data, k=3).ids for number, data in enumerate(images)}

    def ask(number: int) -> bool:
        with ClipSearchClient(server_url) as own:
            if number % 4 == 3:
                return own.search_image(images[number % 8], k=3).ids == expected_images[number % 8]
            return own.search_text(texts[number], target="text", k=3).ids == expected[texts[number]]

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert all(pool.map(ask, range(64)))


def test_base64_images_in_a_composed_query_equal_uploads(client: ClipSearchClient) -> None:
    data = image_bytes(noise_image(8))
    assert client.search([Query(image=data)], k=4).ids == client.search_image(data, k=4).ids
    assert base64.b64decode(Query(image=data).to_json()["image_b64"]) == data


@pytest.mark.gpu
def test_on_a_gpu_concurrent_queries_are_batched_and_equal_exact_search_on_their_own_vectors(
        bundle_path: Path, bundle: Bundle) -> None:
    settings = Settings(bundle_path=bundle_path, device="cuda", batch_window_ms=20)  # type: ignore[call-arg]
    texts = [f"a photo of thing {number}" for number in range(48)]
    with serve(settings) as url, ClipSearchClient(url) as gpu_client, ThreadPoolExecutor(max_workers=48) as pool:
        info = httpx.get(f"{url}/info").json()
        results = list(pool.map(lambda text: gpu_client.search_text(text, k=5), texts))
        vectors = list(pool.map(gpu_client.embed_text, texts))
    assert info["device"].startswith("cuda")
    for result, vector in zip(results, vectors, strict=True):
        assert result.ids == brute_force_bundle(bundle, Modality.IMAGE, vector, 5).ids[0].tolist()


def _nested_prefix(corpus_dir: Path) -> str:
    return str((corpus_dir / "images" / "nested").resolve()) + "/"


def test_every_kind_of_search_takes_a_filter_and_says_how_many_items_match(client: ClipSearchClient,
                                                                           corpus_dir: Path) -> None:
    nested = {"key": "uri", "match": {"prefix": _nested_prefix(corpus_dir)}}
    results = [client.search_text("a photo", k=20, filter=nested),
               client.search_image(corpus_dir / "images" / "picture_000.png", k=20, filter=nested),
               client.search([Query(text="a photo"), Query(item_id=3, weight=0.5)], k=20, filter=nested)]
    for result in results:
        assert len(result.results) == 15 and result.matched == 15 and not result.more
        assert all(hit.uri.startswith(_nested_prefix(corpus_dir)) for hit in result.results)


def test_metadata_filters_reach_sidecar_fields(client: ClipSearchClient) -> None:
    result = client.search_text("a photo", k=10, filter={"must": [{"key": "number", "range": {"gte": 9, "lt": 21}}]})
    assert sorted(hit.metadata["number"] for hit in result.results) == [9, 12, 15, 18]
    assert result.matched == 4


def test_paging_walks_through_results_without_gaps_or_repeats(client: ClipSearchClient) -> None:
    whole = client.search_text("a photo", k=30)
    pages = [client.search_text("a photo", k=8, offset=offset) for offset in range(0, 32, 8)]
    assert [hit.id for page in pages for hit in page.results] == whole.ids
    assert [page.more for page in pages] == [True, True, True, False]


def test_every_kind_of_search_cuts_at_min_score_and_orders_by_metadata(client: ClipSearchClient, bundle: Bundle,
                                                                       encoder: ClipEncoder, corpus_dir: Path) -> None:
    query = encoder.encode_texts(["a photo"])[0]
    ranked = brute_force_bundle(bundle, Modality.IMAGE, query, 30)
    floor = float(ranked.scores[0][11] + ranked.scores[0][12]) / 2  # twelve pass
    result = client.search_text("a photo", k=5, min_score=floor)
    assert result.ids == ranked.ids[0][:5].tolist() and result.matched == 12 and result.more
    by_number = client.search_text("a photo", k=20, order_by={"key": "number", "direction": "asc"},
                                   filter={"key": "number", "exists": True})
    assert [hit.metadata["number"] for hit in by_number.results] == list(range(0, 30, 3))
    upload = client.search_image(corpus_dir / "images" / "picture_006.png", k=3, min_score=0.999, order_by="number")
    assert upload.matched >= 1 and all(hit.score >= 0.999 for hit in upload.results)
    composed = client.search([Query(text="a photo")], k=20, min_score=floor, order_by="uri")
    assert [hit.uri for hit in composed.results] == sorted((hit.uri for hit in composed.results), reverse=True)
    assert composed.matched == 12


@pytest.mark.parametrize("threshold", [0.94, 0.995])
def test_dedup_groups_results_as_a_greedy_pass_over_the_plain_ranking_does(client: ClipSearchClient, bundle: Bundle,
                                                                           threshold: float) -> None:
    everything = bundle.manifest.modalities[Modality.IMAGE].count
    plain = client.search_text("a photo", k=everything).ids
    vectors = {item_id: faiss_index.reconstruct(bundle.indices[Modality.IMAGE], item_id) for item_id in plain}
    # The reference: in rank order, an item joins the first kept item it has a cosine of at least
    # `threshold` with, else it is kept (with all items fetched, nothing depends on fetch sizes).
    groups: dict[int, list[int]] = {}
    for item_id in plain:
        home = next((kept for kept in groups if float(vectors[kept] @ vectors[item_id]) >= threshold), None)
        groups.setdefault(item_id, []) if home is None else groups[home].append(item_id)
    result = client.search_text("a photo", k=everything, dedup=threshold)
    assert {hit.id: list(hit.duplicates or ()) for hit in result.results} == groups
    assert [hit.id for hit in result.results] == list(groups)  # kept in rank order
    assert any(groups.values())  # the tiny model's random weights put some images this close: the check bites
    assert client.search_text("a photo", k=5).results[0].duplicates is None


@pytest.mark.parametrize(("body", "field"), [
    ({"text": "x", "filter": {"must": [{"key": "a", "match": {"eq": 1}}]}}, "filter.must[0].match"),
    ({"text": "x", "filter": {"key": "id", "range": {"gt": "7"}}}, "filter.range.gt"),
    ({"text": "x", "offset": 5000}, "offset"),
    ({"text": "x", "offset": -1}, "offset"),
    ({"text": "x", "dedup": 1.5}, "dedup"),
    ({"text": "x", "min_score": "high"}, "min_score"),
    ({"text": "x", "order_by": {"key": "year", "direction": "up"}}, "order_by.direction"),
    ({"text": "x", "order_by": {"key": "a..b"}}, "order_by.key"),
    ({"text": "x", "order_by": {"direction": "asc"}}, "order_by.key"),
])
def test_bad_options_are_422_naming_the_field(http: httpx.Client, body: dict[str, object], field: str) -> None:
    response = http.post("/search/text", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(("form", "field"), [({"filter": "{not json"}, "filter"), ({"dedup": "lots"}, "dedup"),
                                             ({"filter": '{"key": "a"}'}, "filter"),
                                             ({"min_score": "nan"}, "min_score"), ({"order_by": "year"}, "order_by"),
                                             ({"order_by": '{"key": "year", "direction": 1}'}, "order_by.direction")])
def test_bad_upload_options_are_422_naming_the_form_field(http: httpx.Client, form: dict[str, str],
                                                          field: str) -> None:
    files = {"file": ("q.png", image_bytes(noise_image(5)), "image/png")}
    response = http.post("/search/image", files=files, data=form)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch

from clipsearch.config import Batching, QueryLimits
from clipsearch.errors import InvalidQuery, ItemNotFound, ModalityUnavailable
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.query import ItemTerm, TextTerm
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.reference import assert_same_top_k, brute_force, stored_vectors

Result = TypeVar("Result")


@pytest.fixture()
def service(encoder: ClipEncoder, bundle: Bundle) -> Iterator[SearchService]:
    opened = SearchService(encoder, bundle, QueryLimits(max_k=20))
    yield opened
    opened.close()


@pytest.fixture()
def batching_service(encoder: ClipEncoder, bundle: Bundle) -> Iterator[SearchService]:
    # A wide window, so that queries sent together are sure to share batches.
    opened = SearchService(encoder, bundle, QueryLimits(max_k=20), batching=Batching(max_batch=64, window_s=0.3))
    yield opened
    opened.close()


def in_parallel(work: Callable[[int], Result], count: int) -> list[Result]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(work, range(count)))


def test_concurrent_text_queries_share_forward_passes_and_each_gets_its_own_vector(
        batching_service: SearchService, encoder: ClipEncoder) -> None:
    texts = [f"a photo of thing {number}" for number in range(24)]
    vectors = in_parallel(lambda number: batching_service.embed_text(texts[number]).vector, len(texts))
    np.testing.assert_allclose(np.stack(vectors), encoder.encode_texts(texts), atol=1e-5)
    assert batching_service.pipeline.mean_batches()["encode-text"] > 1


def test_concurrent_uploads_share_forward_passes_and_each_gets_its_own_vector(
        batching_service: SearchService, encoder: ClipEncoder) -> None:
    images = [noise_image(seed) for seed in range(12)]
    vectors = in_parallel(lambda number: batching_service.embed_image(image_bytes(images[number])).vector,
                          len(images))
    np.testing.assert_allclose(np.stack(vectors), encoder.encode_images(images), atol=1e-5)
    assert batching_service.pipeline.mean_batches()["encode-image"] > 1


def test_concurrent_searches_with_different_k_each_get_their_own_top_k(batching_service: SearchService,
                                                                       service: SearchService) -> None:
    queries = service.encoder.encode_texts([f"query {number}" for number in range(16)])

    def ids(source: SearchService, number: int) -> list[int]:
        return [hit.item.id for hit in source.search(queries[number], Modality.IMAGE, 1 + number % 7)]
    batched = in_parallel(lambda number: ids(batching_service, number), len(queries))
    assert batched == [ids(service, number) for number in range(len(queries))]
    assert [len(found) for found in batched] == [1 + number % 7 for number in range(len(queries))]
    assert batching_service.pipeline.mean_batches()["search-image"] > 1


def test_warming_up_runs_every_stage_for_every_target(service: SearchService) -> None:
    service.warm_up()
    batches = {stage: count for stage, (count, _) in service.pipeline.batch_counts().items()}
    assert batches == {"encode-text": 2, "encode-image": 2, "search-image": 1, "search-text": 1}


def test_plain_queries_to_both_targets_with_different_k_share_one_batch_and_get_their_own_hits(
        batching_service: SearchService, service: SearchService) -> None:
    asks = [(f"a photo of thing {number}", Modality.IMAGE if number % 2 else Modality.TEXT, 1 + number % 5)
            for number in range(20)]

    def ids(source: SearchService, number: int) -> list[int]:
        text, target, k = asks[number]
        return [hit.item.id for hit in source.search_text(text, target, k).hits]
    batched = in_parallel(lambda number: ids(batching_service, number), len(asks))
    assert batched == [ids(service, number) for number in range(len(asks))]
    assert [len(found) for found in batched] == [k for _, _, k in asks]
    assert batching_service.pipeline.mean_batches()["encode-text"] > 1


def test_an_uploaded_image_is_searched_in_its_encode_batch_with_the_batch_times(service: SearchService,
                                                                              corpus_dir: Path) -> None:
    picture = corpus_dir / "images" / "picture_000.png"
    answer = service.search_image(picture.read_bytes(), Modality.IMAGE, 3)
    assert answer.hits[0].item.uri == str(picture.resolve())
    assert answer.hits[0].score == pytest.approx(1.0, abs=1e-5)
    [encoding] = answer.query.encodings
    assert encoding.tower is Modality.IMAGE and encoding.seconds > 0 and answer.search_s > 0


def test_batched_search_equals_brute_force_row_by_row(service: SearchService, bundle: Bundle) -> None:
    queries = service.encoder.encode_texts([f"query {number}" for number in range(6)])
    hits = service.search_many(queries, Modality.TEXT, 5)
    found = TopK(np.array([[hit.score for hit in row] for row in hits], np.float32),
                 np.array([[hit.item.id for hit in row] for row in hits], np.int64))
    ids, vectors = stored_vectors(bundle, Modality.TEXT)
    assert_same_top_k(brute_force(vectors, ids, queries, 5), found)


def test_a_stored_item_used_as_a_query_finds_itself_first(service: SearchService) -> None:
    query = service.embed_terms([ItemTerm(12)])
    assert service.search(query.vector, Modality.IMAGE, 1)[0].item.id == 12


def test_composed_vectors_are_unit_length(service: SearchService) -> None:
    query = service.embed_terms([ItemTerm(0, 2.0), TextTerm("dusk", -0.3)])
    assert query.vector.dtype == np.float32
    assert np.linalg.norm(query.vector) == pytest.approx(1.0, abs=1e-6)


def test_limits_and_unknown_items_raise_domain_errors(service: SearchService) -> None:
    with pytest.raises(InvalidQuery, match="k: must be between 1 and 20"):
        service.check_target(Modality.IMAGE, 21)
    with pytest.raises(ItemNotFound):
        service.embed_terms([ItemTerm(10_000)])
    with pytest.raises(ItemNotFound):
        service.collection.item(-1)


def test_an_empty_modality_cannot_be_targeted(encoder: ClipEncoder, bundle: Bundle) -> None:
    images_only = Bundle(bundle.path, bundle.manifest, {Modality.IMAGE: bundle.indices[Modality.IMAGE]}, bundle.items)
    service = SearchService(encoder, images_only)
    with pytest.raises(ModalityUnavailable, match="no text items"):
        service.check_target(Modality.TEXT, 5)
    service.close()


def test_an_exact_index_too_big_for_the_device_is_searched_with_faiss_instead(
        encoder: ClipEncoder, bundle: Bundle, service: SearchService, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr("clipsearch.index.searchers.ExactIndex.from_faiss", out_of_memory)
    fallback = SearchService(encoder, bundle, QueryLimits(max_k=20))
    query = encoder.encode_texts(["a photo"])[0]
    assert [hit.item.id for hit in fallback.search(query, Modality.IMAGE, 8)] == \
        [hit.item.id for hit in service.search(query, Modality.IMAGE, 8)]
    fallback.close()

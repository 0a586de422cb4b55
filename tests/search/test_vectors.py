"""Searches by vector: embedded and searched in one batch, merged with live items, against brute force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.search.query import ItemTerm
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle
from tests.support.reference import assert_same_top_k, brute_force, stored_vectors
from tests.support.threads import in_parallel


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


def test_concurrent_searches_with_different_k_each_get_their_own_top_k(
        batching_service: Callable[[int], SearchService], service: SearchService) -> None:
    queries = service.encoder.encode_texts([f"query {number}" for number in range(16)])
    batching = batching_service(len(queries))

    def ids(source: SearchService, number: int) -> list[int]:
        return [hit.item.id for hit in source.search(queries[number], Modality.IMAGE, 1 + number % 7)]
    batched = in_parallel(lambda number: ids(batching, number), len(queries))
    assert batched == [ids(service, number) for number in range(len(queries))]
    assert [len(found) for found in batched] == [1 + number % 7 for number in range(len(queries))]
    assert batching.pipeline.batch_counts()["search-image"] == (1, 16)


def test_plain_queries_to_both_targets_with_different_k_share_one_batch_and_get_their_own_hits(
        batching_service: Callable[[int], SearchService], service: SearchService) -> None:
    asks = [(f"a photo of thing {number}", Modality.IMAGE if number % 2 else Modality.TEXT, 1 + number % 5)
            for number in range(20)]
    batching = batching_service(len(asks))

    def ids(source: SearchService, number: int) -> list[int]:
        text, target, k = asks[number]
        return [hit.item.id for hit in source.search_text(text, target, k).hits]
    batched = in_parallel(lambda number: ids(batching, number), len(asks))
    assert batched == [ids(service, number) for number in range(len(asks))]
    assert [len(found) for found in batched] == [k for _, _, k in asks]
    assert batching.pipeline.batch_counts()["encode-text"] == (1, 20)

"""The query pipeline: a query's encoding and its search fused into batches shared by concurrent queries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from clipsearch.config import Batching
from clipsearch.index.searchers import searcher_for
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.pipeline import Pending, QueryPipeline
from clipsearch.store.bundle import Bundle
from tests.support.reference import assert_same_top_k, brute_force, brute_force_bundle, stored_vectors


@pytest.fixture()
def pipeline(encoder: ClipEncoder, bundle: Bundle) -> Iterator[QueryPipeline]:
    searchers = {modality: searcher_for(index, True, [torch.device("cpu")], use_gpu=False)
                 for modality, index in bundle.indices.items()}
    # A wide window, so that queries sent together are sure to share batches.
    made = QueryPipeline(encoder, searchers, Batching(max_batch=64, window_s=0.3))
    yield made
    made.close()


def test_a_query_with_a_target_is_embedded_and_searched_in_one_pass(pipeline: QueryPipeline, encoder: ClipEncoder,
                                                                    bundle: Bundle) -> None:
    embedded = pipeline.embed(Modality.TEXT, Pending("a photo", Modality.IMAGE, 3)).result()
    vector = encoder.encode_texts(["a photo"])[0]
    np.testing.assert_allclose(embedded.vector, vector, atol=1e-5)
    assert embedded.found is not None and embedded.encode_s > 0
    assert_same_top_k(brute_force_bundle(bundle, Modality.IMAGE, vector, 3), embedded.found)
    assert pipeline.embed(Modality.TEXT, Pending("no search")).result().found is None


def test_concurrent_queries_share_batches_and_each_gets_its_own_k(encoder: ClipEncoder, bundle: Bundle) -> None:
    texts = [f"a photo of thing {number}" for number in range(12)]
    searchers = {modality: searcher_for(index, True, [torch.device("cpu")], use_gpu=False)
                 for modality, index in bundle.indices.items()}
    # A batch goes as soon as it is full: twelve queries make exactly one, however slow the machine
    # (the minute-long window only bounds a failure).
    pipeline = QueryPipeline(encoder, searchers, Batching(max_batch=len(texts), window_s=60))
    try:
        futures = [pipeline.embed(Modality.TEXT, Pending(text, Modality.TEXT, 1 + number % 4))
                   for number, text in enumerate(texts)]
        for number, (future, vector) in enumerate(zip(futures, encoder.encode_texts(texts), strict=True)):
            found = future.result(timeout=120).found
            assert found is not None
            assert_same_top_k(brute_force_bundle(bundle, Modality.TEXT, vector, 1 + number % 4), found)
        assert pipeline.batch_counts()["encode-text"] == (1, 12)  # searched in the same pass
    finally:
        pipeline.close()


def test_a_search_among_allowed_items_returns_only_them(pipeline: QueryPipeline, bundle: Bundle,
                                                        encoder: ClipEncoder) -> None:
    ids, vectors = stored_vectors(bundle, Modality.IMAGE)
    allowed = pipeline.searchers[Modality.IMAGE].allow(ids[::3])
    query = encoder.encode_texts(["a red square"])[0]
    searched = pipeline.search(query, Modality.IMAGE, 4, allowed).result()
    assert_same_top_k(brute_force(vectors[::3], ids[::3], query, 4), searched.found)


def test_background_items_are_embedded_like_queries(pipeline: QueryPipeline, encoder: ClipEncoder) -> None:
    written = pipeline.embed(Modality.TEXT, Pending("a new item"), background=True).result()
    np.testing.assert_allclose(written.vector, encoder.encode_texts(["a new item"])[0], atol=1e-5)
    assert pipeline.batch_counts()["encode-text"] == (1, 1)

"""Queries to unit vectors through the pipeline's batchers: texts, uploads and weighted terms."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pytest

from clipsearch.config import QueryLimits
from clipsearch.errors import ServiceBusy
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.embedding import QueryEmbedder
from clipsearch.search.query import ImageTerm, ItemTerm, TextTerm
from clipsearch.search.service import SearchService
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.threads import in_parallel


def test_concurrent_text_queries_share_forward_passes_and_each_gets_its_own_vector(
        batching_service: Callable[[int], SearchService], encoder: ClipEncoder) -> None:
    texts = [f"a photo of thing {number}" for number in range(24)]
    service = batching_service(len(texts))
    vectors = in_parallel(lambda number: service.embed_text(texts[number]).vector, len(texts))
    np.testing.assert_allclose(np.stack(vectors), encoder.encode_texts(texts), atol=1e-5)
    assert service.pipeline.batch_counts()["encode-text"] == (1, 24)


def test_concurrent_uploads_share_forward_passes_and_each_gets_its_own_vector(
        batching_service: Callable[[int], SearchService], encoder: ClipEncoder) -> None:
    images = [noise_image(seed) for seed in range(12)]
    service = batching_service(len(images))
    vectors = in_parallel(lambda number: service.embed_image(image_bytes(images[number])).vector, len(images))
    np.testing.assert_allclose(np.stack(vectors), encoder.encode_images(images), atol=1e-5)
    assert service.pipeline.batch_counts()["encode-image"] == (1, 12)


def test_composed_vectors_are_unit_length(service: SearchService) -> None:
    query = service.embed_terms([ItemTerm(0, 2.0), TextTerm("dusk", -0.3)])
    assert query.vector.dtype == np.float32
    assert np.linalg.norm(query.vector) == pytest.approx(1.0, abs=1e-6)


def test_a_composed_query_is_the_normalised_weighted_sum_of_its_terms(service: SearchService,
                                                                     encoder: ClipEncoder) -> None:
    picture = noise_image(4)
    query = service.embed_terms([TextTerm("a dog", 0.75), ImageTerm(image_bytes(picture), 0.25)])
    expected = 0.75 * encoder.encode_texts(["a dog"])[0] + 0.25 * encoder.encode_images([picture])[0]
    np.testing.assert_allclose(query.vector, expected / np.linalg.norm(expected), atol=1e-5)
    assert [encoding.tower for encoding in query.encodings] == [Modality.TEXT, Modality.IMAGE]


def test_a_term_of_weight_zero_is_never_embedded(service: SearchService) -> None:
    query = service.embed_terms([TextTerm("a dog", 1.0), ImageTerm(b"not even an image", 0.0)])
    assert [encoding.tower for encoding in query.encodings] == [Modality.TEXT]


def test_a_model_that_does_not_answer_in_time_is_busy_not_hung(service: SearchService) -> None:
    impatient = QueryEmbedder(service.encoder, service.pipeline, service.uploads, QueryLimits(encode_timeout_s=0.05))
    with pytest.raises(ServiceBusy, match="did not finish within 0.05 s"):
        impatient.wait(Future(), "the model")

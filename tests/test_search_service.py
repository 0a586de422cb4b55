from __future__ import annotations

import numpy as np
import pytest

from clipsearch.bundle import Bundle
from clipsearch.encoder import ClipEncoder
from clipsearch.errors import InvalidQuery, ItemNotFound, ModalityUnavailable
from clipsearch.modality import Modality
from clipsearch.search import ItemTerm, QueryLimits, SearchService, TextTerm


@pytest.fixture()
def service(encoder: ClipEncoder, bundle: Bundle) -> SearchService:
    return SearchService(encoder, bundle, QueryLimits(max_k=20))


def test_batched_search_equals_brute_force_row_by_row(service: SearchService, bundle: Bundle) -> None:
    queries = service.encoder.encode_texts([f"query {number}" for number in range(6)])
    text_ids = np.array([item.id for item in bundle.items if item.modality is Modality.TEXT])
    vectors = np.stack([bundle.indices[Modality.TEXT].reconstruct(int(item_id)) for item_id in text_ids])
    for row, hits in zip(queries, service.search_many(queries, Modality.TEXT, 5), strict=True):
        scores = vectors @ row
        assert [hit.item.id for hit in hits] == text_ids[np.argsort(-scores, kind="stable")[:5]].tolist()
        np.testing.assert_allclose([hit.score for hit in hits], np.sort(scores)[::-1][:5], atol=1e-5)


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
        service.item(-1)


def test_an_empty_modality_cannot_be_targeted(encoder: ClipEncoder, bundle: Bundle) -> None:
    images_only = Bundle(bundle.path, bundle.manifest, {Modality.IMAGE: bundle.indices[Modality.IMAGE]}, bundle.items)
    with pytest.raises(ModalityUnavailable, match="no text items"):
        SearchService(encoder, images_only).check_target(Modality.TEXT, 5)

from __future__ import annotations

from typing import TypeVar

import pytest
import torch

from clipsearch.config import QueryLimits
from clipsearch.errors import InvalidQuery, ItemNotFound, ModalityUnavailable
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.query import ItemTerm
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle

Result = TypeVar("Result")












def test_warming_up_runs_every_stage_for_every_target(service: SearchService) -> None:
    service.warm_up()
    batches = {stage: count for stage, (count, _) in service.pipeline.batch_counts().items()}
    assert batches == {"encode-text": 2, "encode-image": 2, "search-image": 1, "search-text": 1}












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

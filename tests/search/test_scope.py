"""The scope of a search: the base items a filter allows (cached), the live items, and the fusion weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery
from clipsearch.index.fusion import Fusion
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.query import ResultOptions
from clipsearch.search.scope import Scope, with_live
from clipsearch.search.service import SearchService
from clipsearch.store.filters import parse_filter
from clipsearch.store.live import LiveState, NewItem
from tests.support.corpora import private_copy
from tests.support.reference import unit_vectors


def test_the_items_a_filter_allows_are_computed_once_per_filter_and_target(service: SearchService) -> None:
    first = service.scope(Modality.IMAGE, parse_filter({"key": "number", "exists": True})).base
    again = service.scope(Modality.IMAGE, parse_filter({"exists": True, "key": "number"})).base
    other_target = service.scope(Modality.TEXT, parse_filter({"key": "number", "exists": True})).base
    assert first is not None and first is again and first is not other_target


def test_a_scope_counts_the_allowed_base_items_and_the_live_ones(encoder: ClipEncoder, bundle_path: Path,
                                                                 tmp_path: Path) -> None:
    with opened_service(encoder, private_copy(bundle_path, tmp_path)) as live_service:
        everything = live_service.scope(Modality.TEXT, None)
        assert everything.base is None and everything.matched == live_service.collection.base_count(Modality.TEXT)
        assert live_service.collection.live is not None
        text_ids = live_service.bundle.items.matching_ids(Modality.TEXT)
        vector = unit_vectors(1, dim=live_service.bundle.manifest.embedding_dim, seed=4)[0]
        [added] = live_service.collection.live.write([NewItem("k", Modality.TEXT, "k", "new", {}, "h", vector)])
        live_service.collection.live.delete([int(text_ids[0])])
        scope = live_service.scope(Modality.TEXT, None)
        assert scope.base is not None and int(text_ids[0]) not in scope.base.ids  # hidden from the base
        assert list(scope.live_ids) == [added] and scope.matched == everything.matched


def test_fusion_weights_are_refused_for_texts_and_for_bundles_without_captions(service: SearchService) -> None:
    weights = ResultOptions(fusion=Fusion(0.5, 0.5))
    for target in (Modality.TEXT, Modality.IMAGE):
        with pytest.raises(InvalidQuery) as raised:
            service.scope.fusion_for(target, weights)
        assert raised.value.field == "fusion"
    assert service.scope.fusion_for(Modality.IMAGE, ResultOptions()) is None


def test_live_items_join_the_base_results_by_score() -> None:
    ids, vectors = np.array([10, 11], np.int64), unit_vectors(2, dim=8, seed=1)
    query = unit_vectors(1, dim=8, seed=2)[0]
    base = TopK(np.array([[0.9, -1.0]], np.float32), np.array([[3, -1]], np.int64))  # one result and an empty slot
    scope = Scope(LiveState(generation=0), None, True, ids, vectors, 3)
    merged = with_live(base, scope, query, k=2)
    expected = sorted([(0.9, 3), *((float(vectors[row] @ query), int(ids[row])) for row in range(2))], reverse=True)
    assert merged.ids[0].tolist() == [item_id for _, item_id in expected[:2]]

"""Explanations of results through the service: term shares that add up to each score, heatmaps per image item."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.errors import InvalidQuery, ItemNotFound
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.explain import VALUE_PATH
from clipsearch.search.query import ItemTerm, TextTerm
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle, load_bundle
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.reference import stored_vectors


def test_a_composed_querys_shares_add_up_to_each_results_score(service: SearchService, bundle: Bundle) -> None:
    query = service.embed_terms([TextTerm("a red square", 1.0), ItemTerm(3, 0.6), TextTerm("blue", -0.4)])
    answer = service.search_vector(query, Modality.IMAGE, 5)
    shares = service.term_shares(query, answer.hits)
    assert shares.shape == (5, 3)
    ids, vectors = stored_vectors(bundle, Modality.IMAGE)
    for hit, row in zip(answer.hits, shares, strict=True):
        assert row.sum() == pytest.approx(hit.score, abs=1e-5)
        assert row.sum() == pytest.approx(float(vectors[list(ids).index(hit.item.id)] @ query.vector), abs=1e-5)


def test_a_plain_querys_one_share_is_its_score(service: SearchService) -> None:
    answer = service.search_text("a photo", Modality.IMAGE, 3)
    shares = service.term_shares(answer.query, answer.hits)
    assert shares[:, 0] == pytest.approx([hit.score for hit in answer.hits], abs=1e-5)


def test_a_heatmap_has_the_models_patch_grid_and_an_overlay(service: SearchService, bundle: Bundle) -> None:
    image_ids = [item.id for item in bundle.items if item.modality is Modality.IMAGE][:2]
    query = service.embed_terms([TextTerm("a red square")])
    heatmaps = service.heatmaps(query, image_ids)
    grid_side = 64 // 16  # the tiny model: 64-pixel input, 16-pixel patches
    for heatmap in heatmaps:
        assert heatmap.grid.shape == (grid_side, grid_side) and heatmap.method == VALUE_PATH
        assert np.all(np.abs(heatmap.grid) <= 1 + 1e-5)
        assert heatmap.view.shape == (64, 64, 3)
        overlay = Image.open(io.BytesIO(heatmap.overlay_png()))
        assert overlay.format == "PNG" and overlay.size == (224, 224)


def test_explaining_too_many_items_or_a_text_item_is_refused(service: SearchService, bundle: Bundle) -> None:
    query = service.embed_terms([TextTerm("a photo")])
    with pytest.raises(InvalidQuery, match="at most 3 items") as refused:
        service.heatmaps(query, [0, 1, 2, 3])
    assert refused.value.field == "item_ids"
    text_id = next(item.id for item in bundle.items if item.modality is Modality.TEXT)
    with pytest.raises(InvalidQuery, match="not an image") as refused:
        service.heatmaps(query, [text_id])
    assert refused.value.field == "item_ids[0]"


def test_an_image_file_that_no_longer_decodes_is_an_item_gone(encoder: ClipEncoder, tmp_path: Path) -> None:
    images = make_image_corpus(tmp_path / "images", 2)
    build(tiny_config(tmp_path / "bundle", images=images))
    bundle = load_bundle(tmp_path / "bundle")
    service = SearchService(encoder, bundle)
    try:
        Path(bundle.items.get(0).uri).write_bytes(b"overwritten since")  # type: ignore[union-attr]
        with pytest.raises(ItemNotFound, match="no longer decodes") as gone:
            service.heatmaps(service.embed_terms([TextTerm("a photo")]), [1, 0])
        assert gone.value.field == "item_ids[1]"
    finally:
        service.close()
        bundle.close()



"""Why a result matched: term shares that add up to the score, and heatmaps that light the right half."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsearch.config import OFFLINE_MODEL, QueryLimits
from clipsearch.errors import InvalidQuery, ItemNotFound
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import read_pairs
from clipsearch.quality.finetune import FinetuneConfig, finetune
from clipsearch.search.explain import RAW_TOKENS, VALUE_PATH, PatchFeatures, overlay_png, similarity_grids, term_shares
from clipsearch.search.query import ItemTerm, TextTerm, WeightedPart
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle, load_bundle
from indexer.shapes import COLOURS, write_shapes_corpus
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.reference import stored_vectors

COLOUR_TRAINING = FinetuneConfig(epochs=40, batch_size=32, learning_rate=2e-3, warmup_steps=20, held_out=100,
                                 patience=40)
"""The tiny model fine-tuned on the shapes corpus, long enough to know its colours (about 50 s on 2 cores)."""


@pytest.fixture()
def service(encoder: ClipEncoder, bundle: Bundle) -> Iterator[SearchService]:
    opened = SearchService(encoder, bundle, QueryLimits(max_k=20, max_explained=3))
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> ClipEncoder:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_corpus(out, count=600, seed=5)
    encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="torch")
    finetune(encoder, read_pairs(out / "images"), COLOUR_TRAINING, progress=False)
    encoder.model.eval()
    return encoder


def halves(left: str, right: str) -> Image.Image:
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[:, :64], pixels[:, 64:] = COLOURS[left], COLOURS[right]
    return Image.fromarray(pixels)


def test_term_shares_are_weight_times_cosine_over_the_sums_norm() -> None:
    rng = np.random.default_rng(0)
    terms = rng.normal(size=(3, 8))
    terms /= np.linalg.norm(terms, axis=1, keepdims=True)
    weights = [1.0, 0.5, -0.7]
    total = sum(weight * term for weight, term in zip(weights, terms, strict=True))
    items = rng.normal(size=(4, 8))
    shares = term_shares([WeightedPart(weight, term, float(np.linalg.norm(total)))
                          for weight, term in zip(weights, terms, strict=True)], items)
    for item, row in zip(items, shares, strict=True):
        assert row == pytest.approx([weight * (term @ item) / np.linalg.norm(total)
                                     for weight, term in zip(weights, terms, strict=True)])
        assert row.sum() == pytest.approx(item @ (total / np.linalg.norm(total)))


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


def test_heatmaps_batch_patch_features_like_one_image_at_a_time(encoder: ClipEncoder) -> None:
    patches = PatchFeatures(encoder.model)
    views = torch.stack([encoder.prepare_image(halves("red", "blue")), encoder.prepare_image(halves("green", "red"))])
    together = patches(encoder.model_input(views))
    alone = torch.cat([patches(encoder.model_input(views[number:number + 1])) for number in range(2)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(("left", "right"), [("red", "blue"), ("blue", "red")])
def test_red_lights_the_red_half_of_a_red_and_blue_image(colour_model: ClipEncoder, left: str, right: str) -> None:
    patches = PatchFeatures(colour_model.model)
    grids = similarity_grids(patches(colour_model.model_input(colour_model.prepare_image(halves(left, right))[None])),
                             colour_model.encode_texts(["red"])[0])[0]
    columns = grids.shape[1]
    red_half = grids[:, :columns // 2] if left == "red" else grids[:, columns // 2:]
    blue_half = grids[:, columns // 2:] if left == "red" else grids[:, :columns // 2]
    assert red_half.mean() > blue_half.mean()


def test_the_overlay_is_hottest_where_the_grid_is_highest() -> None:
    view = np.full((64, 64, 3), 128, np.uint8)
    grid = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    overlay = np.asarray(Image.open(io.BytesIO(overlay_png(view, grid))).convert("RGB")).astype(int)
    top_right, bottom_left = overlay[20, -20], overlay[-20, 20]
    assert top_right[0] > bottom_left[0] and top_right[2] < bottom_left[2], "red where high, blue where low"


def test_raw_tokens_remain_available_for_comparison(encoder: ClipEncoder) -> None:
    patches = PatchFeatures(encoder.model)
    raw = patches(encoder.model_input(encoder.prepare_image(halves("red", "blue"))[None]), RAW_TOKENS)
    assert raw.shape == (1, 4, 4, encoder.embedding_dim)
    assert torch.allclose(raw.norm(dim=-1), torch.ones(1, 4, 4), atol=1e-5)


@pytest.mark.gpu
def test_on_a_gpu_heatmaps_match_the_cpus_within_fp16(encoder: ClipEncoder) -> None:
    gpu = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")
    gpu.enable_cuda_graphs(8)  # eager heatmaps must still work beside captured towers
    view = encoder.prepare_image(halves("red", "blue"))[None]
    query = encoder.encode_texts(["red"])[0]
    on_cpu = similarity_grids(PatchFeatures(encoder.model)(encoder.model_input(view)), query)
    on_gpu = similarity_grids(PatchFeatures(gpu.model)(gpu.model_input(view)), query)
    assert np.allclose(on_cpu, on_gpu, atol=2e-2)

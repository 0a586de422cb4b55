"""Why a result matched: term shares that add up to the score, and heatmaps that light the right half."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipsearch.config import OFFLINE_MODEL
from clipsearch.errors import InvalidQuery
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import read_pairs
from clipsearch.quality.finetune import FinetuneConfig, finetune
from clipsearch.search.explain import RAW_TOKENS, PatchFeatures, overlay_png, similarity_grids, term_shares
from clipsearch.search.query import WeightedPart
from indexer.shapes import COLOURS, write_shapes_corpus

COLOUR_TRAINING = FinetuneConfig(epochs=40, batch_size=32, learning_rate=2e-3, warmup_steps=20, held_out=100,
                                 patience=40)
"""The tiny model fine-tuned on the shapes corpus, long enough to know its colours (about 50 s on 2 cores)."""


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


def test_in_fp16_as_on_a_gpu_heatmaps_match_fp32s_within_fp16_precision(encoder: ClipEncoder) -> None:
    half = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", precision="fp16", backend="torch")
    view = encoder.prepare_image(halves("red", "blue"))[None]
    query = encoder.encode_texts(["red"])[0]
    in_full = similarity_grids(PatchFeatures(encoder.model)(encoder.model_input(view)), query)
    in_half = similarity_grids(PatchFeatures(half.model)(half.model_input(view)), query)
    assert np.allclose(in_full, in_half, atol=2e-2)


@pytest.mark.gpu
def test_on_a_gpu_heatmaps_match_the_cpus_within_fp16(encoder: ClipEncoder) -> None:
    gpu = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")
    gpu.enable_cuda_graphs(8)  # eager heatmaps must still work beside captured towers
    view = encoder.prepare_image(halves("red", "blue"))[None]
    query = encoder.encode_texts(["red"])[0]
    on_cpu = similarity_grids(PatchFeatures(encoder.model)(encoder.model_input(view)), query)
    on_gpu = similarity_grids(PatchFeatures(gpu.model)(gpu.model_input(view)), query)
    assert np.allclose(on_cpu, on_gpu, atol=2e-2)


def test_heatmaps_batch_patch_features_like_one_image_at_a_time(encoder: ClipEncoder) -> None:
    patches = PatchFeatures(encoder.model)
    views = torch.stack([encoder.prepare_image(halves("red", "blue")), encoder.prepare_image(halves("green", "red"))])
    together = patches(encoder.model_input(views))
    alone = torch.cat([patches(encoder.model_input(views[number:number + 1])) for number in range(2)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_a_model_without_an_open_clip_vit_is_refused_naming_it() -> None:
    pytest.importorskip("transformers", reason="the [multilingual] extra is not installed")
    chinese_clip = load_encoder("tiny-chinese-clip", pretrained=None, device="cpu", backend="torch")
    with pytest.raises(InvalidQuery, match="ChineseClip") as raised:
        PatchFeatures(chinese_clip.model)
    assert raised.value.field == "model"

"""Trimming the text tower to each batch's real length gives the full-context embeddings, wherever it is used."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import open_clip
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL, OFFLINE_MODEL
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.text_trim import CausalTrimmer, PaddingTrimmer, text_trimmer

WORDS = ["a", "dog", "on", "the", "beach", "photo", "of", "red", "car", "at", "night", "ünïcode", "🙂", "x-ray",
         "左边的", "红色", "圆形", "狗"]


def full_context(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 texts: list[str]) -> np.ndarray:
    """The reference: open_clip's own encode_text on the whole context, normalised like the encoder."""
    with torch.inference_mode():
        features = model.encode_text(tokenizer(texts)).float()  # type: ignore[operator]
    return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()


@pytest.mark.parametrize(("name", "trimmed"), [(OFFLINE_MODEL, True), ("ViT-B-32", True), ("RN50", True),
                                                ("ViT-B-16-SigLIP", False), ("coca_ViT-B-32", False)])
def test_trimming_is_decided_from_the_models_text_tower(name: str, trimmed: bool) -> None:
    # SigLIP pools the last position and has no causal mask; CoCa appends a class token.
    assert CausalTrimmer.supports(open_clip.create_model(name, pretrained=None)) is trimmed


def test_the_encoder_trims_a_causal_argmax_tower(encoder: ClipEncoder) -> None:
    assert encoder.text_trim is not None


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(WORDS), min_size=0, max_size=90).map(" ".join), min_size=1, max_size=9))
def test_any_batch_of_texts_embeds_as_with_the_full_context(encoder: ClipEncoder, texts: list[str]) -> None:
    # Lengths from the empty text to past the 77-token context (cut there), mixed in one batch.
    expected = full_context(encoder.model, encoder.tokenizer, texts)
    np.testing.assert_allclose(encoder.encode_texts(texts), expected, atol=1e-5)


def test_vit_b_32_with_random_weights_embeds_as_with_the_full_context() -> None:
    encoder = load_encoder("ViT-B-32", pretrained=None, device="cpu")
    assert encoder.text_trim is not None
    batches = [["a dog"], ["a photo of a dog on the beach"], ["x"] * 3 + [" ".join(WORDS * 3)],
               [" ".join(WORDS[:count]) for count in range(1, 14)], [" ".join(WORDS * 10)]]
    for texts in batches:
        expected = full_context(encoder.model, encoder.tokenizer, texts)
        np.testing.assert_allclose(encoder.encode_texts(texts), expected, atol=1e-5)


def test_a_tower_that_cannot_be_trimmed_runs_its_full_context() -> None:
    model = open_clip.create_model(OFFLINE_MODEL, pretrained=None)
    model.text_pool_type = "last"  # the pooled position would move with the length: not exact
    assert text_trimmer(model) is None


@pytest.mark.parametrize("name", [MULTILINGUAL_OFFLINE_MODEL, "tiny-chinese-clip"])
def test_a_hugging_face_tower_that_masks_its_padding_is_trimmed_to_the_batchs_real_length(name: str) -> None:
    encoder = load_encoder(name, pretrained=None, device="cpu")
    assert isinstance(encoder.text_trim, PaddingTrimmer)
    batches = [["左边的红色圆形"], ["a red circle on the left", "红色 car", ""], [" ".join(WORDS * 10)],
               [" ".join(WORDS[:count]) for count in range(1, 19)]]
    for texts in batches:
        expected = full_context(encoder.model, encoder.tokenizer, texts)
        np.testing.assert_allclose(encoder.encode_texts(texts), expected, atol=1e-5)


def test_the_real_length_of_a_padded_batch_ends_after_its_longest_text() -> None:
    trimmer = PaddingTrimmer(model=None, pad_token_id=1)
    assert trimmer.real_length(torch.tensor([[0, 5, 2, 1, 1, 1], [0, 5, 6, 7, 2, 1]])) == 5
    assert trimmer.real_length(torch.tensor([[1, 1, 1]])) == 1  # nothing real: one position still runs


def test_a_hugging_face_tower_that_max_pools_is_not_trimmed() -> None:
    # Max pooling over padded positions is what open_clip computes; cutting them would change it.
    model = open_clip.create_model(MULTILINGUAL_OFFLINE_MODEL, pretrained=None, pretrained_text=False)
    model.text.pooler = open_clip.hf_model.MaxPooler()
    assert text_trimmer(model) is None


@pytest.mark.gpu
def test_on_a_gpu_text_graphs_for_each_length_bucket_equal_the_eager_full_context() -> None:
    gpu = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")
    texts = [" ".join(WORDS[:count % len(WORDS)] * (1 + count // 7)) for count in range(40)]
    eager = full_context(gpu.model, lambda batch: gpu.tokenizer(batch).to("cuda"), texts)  # type: ignore[arg-type]
    assert gpu.enable_cuda_graphs(16)
    for size in (1, 5, 16, 40):  # short and long texts together: the buckets 16, 32 and the full context
        np.testing.assert_allclose(gpu.encode_texts(texts[:size]), eager[:size], atol=2e-3)

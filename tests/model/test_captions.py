"""Captions: a tiny CoCa runs the real generation path; the indexer fills in only missing captions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clipsearch.config import CaptionConfig
from clipsearch.errors import ModelLoadError
from clipsearch.ingest.build import build
from clipsearch.ingest.fingerprint import corpus_fingerprint
from clipsearch.modality import Modality
from clipsearch.model import captions
from clipsearch.model.captions import OFFLINE_CAPTION_MODEL, Captioner, decode_caption, load_captioner
from clipsearch.store.bundle import load_bundle
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.imagefiles import noise_image

TINY = CaptionConfig(model=OFFLINE_CAPTION_MODEL, pretrained=None, device="cpu", generation="top_k", max_tokens=12)


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return load_captioner(TINY)


def test_a_batch_of_images_gets_one_caption_each_within_the_token_limit(captioner: Captioner) -> None:
    texts = captioner.caption_images([noise_image(seed, (50, 30)) for seed in range(3)])
    assert len(texts) == 3 and all(isinstance(text, str) and text for text in texts)
    for text in texts:
        assert "<start_of_text>" not in text and "<end_of_text>" not in text
        # Every word ends a token, so a caption of n tokens (its start token included) has < n words.
        assert len(text.split()) < TINY.max_tokens
    assert captioner.caption_images([]) == []


def test_beam_search_is_deterministic(captioner: Captioner) -> None:
    beams = load_captioner(CaptionConfig(model=OFFLINE_CAPTION_MODEL, pretrained=None, device="cpu", max_tokens=10))
    image = noise_image(7)
    assert beams.caption_images([image]) == beams.caption_images([image])


def test_decoding_stops_at_the_first_end_token() -> None:
    start, end = 49406, 49407
    hello = 3306  # "hello" in open_clip's BPE vocabulary
    tokens = torch.tensor([start, hello, hello, end, hello, 0, 0])
    assert decode_caption(tokens) == "hello hello"
    assert decode_caption(torch.tensor([start, end, 0])) == ""


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions, "transformers_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"\[caption\] extra") as refused:
        load_captioner(TINY)
    assert refused.value.field == "caption_model"


@pytest.mark.parametrize(("config", "field"), [
    (CaptionConfig(model="tiny", pretrained=None), "caption_model"),
    (CaptionConfig(model=OFFLINE_CAPTION_MODEL, pretrained=None, generation="greedy"), "caption_generation"),
    (CaptionConfig(model=OFFLINE_CAPTION_MODEL, pretrained=None, max_tokens=3), "caption_max_tokens"),
    (CaptionConfig(model=OFFLINE_CAPTION_MODEL, pretrained=None, checkpoint=Path("/nonexistent.pt")),
     "caption_checkpoint"),
])
def test_unusable_caption_settings_are_refused_naming_the_setting(config: CaptionConfig, field: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        load_captioner(config)
    assert refused.value.field == field


def test_a_build_captions_only_the_images_without_one_and_marks_them(tmp_path: Path) -> None:
    images = make_image_corpus(tmp_path / "images", 7)
    summary = build(tiny_config(tmp_path / "bundle", images=images, caption=TINY))
    bundle = load_bundle(tmp_path / "bundle")
    try:
        items = [item for item in bundle.items if item.modality is Modality.IMAGE]
        given = [item for item in items if not item.extra.get("caption_generated")]
        generated = [item for item in items if item.extra.get("caption_generated")]
        assert {item.text for item in given} == {f"caption of picture {number}" for number in (0, 3, 6)}
        assert len(generated) == 4 == summary.captioned
        for item in generated:
            assert item.text and item.extra["caption_model"] == "tiny-coca (random weights, seed 0)"
    finally:
        bundle.close()


def test_a_caption_model_changes_the_corpus_fingerprint(tmp_path: Path) -> None:
    images = make_image_corpus(tmp_path / "images", 2)
    plain, captioned = tiny_config(tmp_path / "b", images=images), tiny_config(tmp_path / "b", images=images,
                                                                               caption=TINY)
    assert corpus_fingerprint(plain, {}) != corpus_fingerprint(captioned, {})


def test_in_fp16_as_on_a_gpu_the_captions_are_fp32s() -> None:
    """The GPU's half-precision path run on the CPU, with the same weights: the same captions. Beam
    search, which is deterministic: top-k sampling draws from probabilities that fp16 shifts a little,
    so one sampled word in a caption may differ (CI's random test order found such a draw)."""
    config = replace(TINY, generation="beam_search", max_tokens=10)
    half = load_captioner(config, half=True)
    assert half.dtype == torch.float16 and {parameter.dtype for parameter in half.model.parameters()} == {torch.float16}
    images = [noise_image(seed) for seed in range(4)]
    assert half.caption_images(images) == load_captioner(config).caption_images(images)


@pytest.mark.gpu
def test_on_a_gpu_captions_are_generated_in_fp16() -> None:
    gpu = load_captioner(CaptionConfig(model=OFFLINE_CAPTION_MODEL, pretrained=None, device="cuda",
                                       generation="beam_search", max_tokens=10))
    assert gpu.dtype == torch.float16
    texts = gpu.caption_images([noise_image(seed) for seed in range(4)])
    assert len(texts) == 4 and all(isinstance(text, str) for text in texts)


def test_random_weights_follow_from_the_seed_whatever_memory_held_before() -> None:
    first = load_captioner(TINY).model.text_decoder.text_projection.detach().clone()
    garbage = [torch.full((512, 512), float("nan")) for _ in range(50)]  # what torch.empty may hand out next
    del garbage
    second = load_captioner(TINY).model.text_decoder.text_projection.detach()
    assert torch.equal(first, second) and torch.isfinite(second).all()

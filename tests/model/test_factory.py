"""load_encoder: a model name with a pretrained tag, a checkpoint file or random weights, on a device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.tokenizer import HFTokenizer

from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL, OFFLINE_MODEL
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder


def test_random_weights_are_the_same_on_every_load(encoder: ClipEncoder) -> None:
    again = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu")
    np.testing.assert_array_equal(again.encode_texts(["same"]), encoder.encode_texts(["same"]))
    assert again.ref == encoder.ref


def test_a_local_checkpoint_file_loads_and_is_identified_by_its_hash(encoder: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt"
    state = {name: tensor * 0.5 for name, tensor in encoder.model.state_dict().items()}
    torch.save({"state_dict": state}, checkpoint)
    loaded = load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=checkpoint, device="cpu")
    assert loaded.ref.checkpoint_sha256 is not None and loaded.ref.pretrained is None
    assert not np.allclose(loaded.encode_texts(["x"]), encoder.encode_texts(["x"]))


def test_unknown_model_names_are_refused_with_the_name_and_the_offline_models(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no-such-model") as raised:
        load_encoder("no-such-model", pretrained=None, device="cpu")
    assert "tiny-multilingual" in str(raised.value) and "tiny-chinese-clip" in str(raised.value)


def test_the_multilingual_offline_model_takes_open_clips_hugging_face_path() -> None:
    multilingual = load_encoder(MULTILINGUAL_OFFLINE_MODEL, pretrained=None, device="cpu")
    assert isinstance(multilingual.model.text, HFTextEncoder)
    assert isinstance(multilingual.tokenizer, HFTokenizer)
    tokens = multilingual.tokenizer.tokenizer.tokenize("左边的红色圆形 on the left")
    assert tokens == ["左", "边", "的", "红", "色", "圆", "形", "on", "the", "left"], "one token per Chinese character"
    again = load_encoder(MULTILINGUAL_OFFLINE_MODEL, pretrained=None, device="cpu")
    np.testing.assert_array_equal(again.encode_texts(["红色"]), multilingual.encode_texts(["红色"]))


def test_a_multilingual_checkpoint_loads_the_text_tower_from_the_file(tmp_path: Path) -> None:
    multilingual = load_encoder(MULTILINGUAL_OFFLINE_MODEL, pretrained=None, device="cpu")
    checkpoint = tmp_path / "tuned.pt"
    torch.save({"state_dict": {name: tensor * 0.5 for name, tensor in multilingual.model.state_dict().items()}},
               checkpoint)
    loaded = load_encoder(MULTILINGUAL_OFFLINE_MODEL, pretrained=None, checkpoint=checkpoint, device="cpu")
    assert not np.allclose(loaded.encode_texts(["红色"]), multilingual.encode_texts(["红色"]))


class LanguageTokenizer:
    """A tokenizer that takes a source language, as open_clip's HFTokenizer does for NLLB models."""

    def __init__(self, wrapped: object) -> None:
        self.wrapped, self.languages = wrapped, ["eng_Latn", "zho_Hans"]
        self.language = "eng_Latn"

    def set_lang_fn(self, language: str) -> None:
        if language not in self.languages:
            raise KeyError(language)
        self.language = language

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.wrapped(texts)  # type: ignore[operator, no-any-return]


def test_the_text_language_reaches_a_tokenizer_that_takes_one(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[LanguageTokenizer] = []
    real = open_clip.get_tokenizer

    def tokenizer_with_language(name: str) -> LanguageTokenizer:
        made.append(LanguageTokenizer(real(name)))
        return made[-1]

    monkeypatch.setattr(open_clip, "get_tokenizer", tokenizer_with_language)
    load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", text_language="zho_Hans")
    assert made[-1].language == "zho_Hans"
    with pytest.raises(ModelLoadError, match="xx_Yyyy") as raised:
        load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", text_language="xx_Yyyy")
    assert raised.value.field == "text_language"


def test_a_text_language_for_a_tokenizer_without_languages_is_refused_naming_the_setting() -> None:
    with pytest.raises(ModelLoadError, match="takes no language") as raised:
        load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", text_language="zho_Hans")
    assert raised.value.field == "text_language"


def test_a_missing_checkpoint_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing.pt"):
        load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=tmp_path / "missing.pt", device="cpu")


def test_cuda_is_refused_clearly_when_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without one, wherever it runs
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")


@pytest.mark.network
def test_the_default_pretrained_model_loads() -> None:
    default = load_encoder(device="cpu")
    assert default.embedding_dim == 512

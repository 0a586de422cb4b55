"""Chinese-CLIP (OFA-Sys, MIT licence) through transformers' ChineseCLIPModel: a second model family.

open_clip does not carry Chinese-CLIP, so its towers are wrapped here in the shape ClipEncoder
expects of any model (the encoder contract):

- `encode_image(pixels)` and `encode_text(tokens)` give each tower's features, `normalize=True`
  makes them unit vectors, as open_clip's do;
- the tokenizer is a callable from texts to a (n, context) tensor of token ids, padded at the end;
- `logit_scale` and `lock_image_tower` / `lock_text_tower` serve fine-tuning;
- `text_pad_token_id` declares that the text tower masks its padding, so the encoder may trim it
  (clipsearch.model.text_trim);
- the image preparation comes from the model's own preprocessor_config.json (a square resize for
  Chinese-CLIP: no crop).

Nothing else in the service knows which family a model is: bundles record the model name and the
weights (a Hugging Face repository id or a local directory as the pretrained tag), like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipsearch.config import CHINESE_CLIP_MODELS
from clipsearch.errors import ModelLoadError
from clipsearch.model.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

CONTEXT_LENGTH = 52
"""Chinese-CLIP's text context in training (its tokenizer allows 512): longer texts are truncated."""
OFFLINE_DIR = Path(__file__).parent / "model_configs" / "hf" / "tiny-chinese-clip"
"""The offline `tiny-chinese-clip`: its config, tokenizer and image settings (scripts/make-tiny-towers)."""


def is_chinese_clip(model_name: str) -> bool:
    return model_name in CHINESE_CLIP_MODELS


def architecture_source(model_name: str) -> str:
    """Where `model_name`'s config, tokenizer and image settings are: a Hugging Face repository id, or
    the shipped directory of the offline model."""
    source = CHINESE_CLIP_MODELS[model_name]
    return str(OFFLINE_DIR) if source is None else source


class ChineseClip(torch.nn.Module):
    """A ChineseCLIPModel with open_clip's tower methods."""

    def __init__(self, model: Any, pad_token_id: int) -> None:
        super().__init__()
        self.hf = model
        self.text_pad_token_id = pad_token_id

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.hf.logit_scale  # type: ignore[no-any-return]

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.hf.get_image_features(pixel_values=pixels)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mask = (tokens != self.text_pad_token_id).long()
        features = self.hf.get_text_features(input_ids=tokens, attention_mask=mask)
        return F.normalize(features, dim=-1) if normalize else features

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        for parameter in [*self.hf.vision_model.parameters(), *self.hf.visual_projection.parameters()]:
            parameter.requires_grad = False

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        for parameter in [*self.hf.text_model.parameters(), *self.hf.text_projection.parameters()]:
            parameter.requires_grad = False


class ChineseClipTokenizer:
    """Texts → (n, CONTEXT_LENGTH) token ids, padded at the end and truncated, as open_clip's tokenizers give."""

    def __init__(self, tokenizer: Any, context_length: int = CONTEXT_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        batch = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(batch, return_tensors="pt", max_length=self.context_length, padding="max_length",
                                 truncation=True)
        return encoded.input_ids  # type: ignore[no-any-return]


def load_chinese_clip(model_name: str, pretrained: str | None, checkpoint: Path | None
                      ) -> tuple[ChineseClip, ChineseClipTokenizer, PreprocessConfig]:
    """The model (random weights unless `pretrained` names a repository or directory holding them, or
    `checkpoint` a fine-tuned state), its tokenizer and its image preparation. The caller seeds the RNG."""
    try:
        from transformers import AutoTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel
    except ImportError as error:
        raise ModelLoadError(f"{model_name} runs on transformers: pip install 'clipsearch[multilingual]'",
                             "model") from error
    source = pretrained or architecture_source(model_name)
    if pretrained:
        model = ChineseCLIPModel.from_pretrained(pretrained)
    else:
        model = ChineseCLIPModel(ChineseCLIPConfig.from_pretrained(source))
    tokenizer = AutoTokenizer.from_pretrained(source)  # type: ignore[no-untyped-call]
    wrapped = ChineseClip(model, int(tokenizer.pad_token_id))
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        wrapped.load_state_dict(state.get("state_dict", state))
    preparation = PreprocessConfig.of_hf_processor(ChineseCLIPImageProcessor.from_pretrained(source))
    return wrapped, ChineseClipTokenizer(tokenizer), preparation

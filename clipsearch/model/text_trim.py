"""Exact length trimming of a text tower: run it on the batch's real length, not the full context.

CLIP's text tower always runs its whole context (77 tokens), although a query is usually under
15. Two kinds of tower give the same output when the padding after the batch's longest text is
cut off (up to the floating-point order of a smaller matrix product):

- CausalTrimmer: open_clip's own CLIP tower, where each position attends only to itself and
  earlier ones and the output is pooled at the end-of-text token (the highest token id, hence
  "argmax"), so the padding after that token cannot change it. Its positional embedding and
  causal mask are cut to the shorter length.
- PaddingTrimmer: a bidirectional Hugging Face tower (XLM-RoBERTa, BERT, mT5, NLLB's encoder, as
  open_clip's HFTextEncoder wraps them, and Chinese-CLIP's BERT) that masks padding out of its
  attention and pools over real tokens only (mean) or at the first one (CLS). Its positions are
  numbered from the start, so dropping trailing padding changes nothing.

Trimming is decided from the model's own attributes, never its name. Every other text tower
(SigLIP's pools the last position; CoCa's appends a class token; max pooling; custom towers)
runs its full context as before.
"""

from __future__ import annotations

from typing import Any

import torch
from open_clip.hf_model import ClsPooler, HFTextEncoder, MeanPooler


class CausalTrimmer:
    """Runs `model.encode_text` on tokens cut to their real length, through open_clip's own code."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.context_length = int(model.positional_embedding.shape[0])

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether trimming `model`'s text tower gives exactly what the full context gives."""
        mask = getattr(model, "attn_mask", None)
        positions = getattr(model, "positional_embedding", None)
        if getattr(model, "text_pool_type", None) != "argmax" or mask is None or positions is None:
            return False
        if getattr(model, "cls_emb", None) is not None or mask.dim() != 2:
            return False
        # Causal: every position is blocked from every later one, and from none before it.
        blocked = torch.isinf(mask.float()) & (mask.float() < 0)
        return bool(torch.equal(blocked, torch.ones_like(blocked).triu(1)))

    @staticmethod
    def real_length(tokens: torch.Tensor) -> int:
        """The longest real sequence of a batch of token ids (n, context): up to and with end-of-text."""
        return int(tokens.argmax(dim=-1).max()) + 1

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower's output for `tokens` (n, L), L ≤ context: open_clip's encode_text with the
        positional embedding and the mask cut to L."""
        length = tokens.shape[1]
        view = _CutTo(self.model, length)
        return type(self.model).encode_text(view, tokens)  # type: ignore[no-any-return]


class PaddingTrimmer:
    """Runs `model.encode_text` on tokens without their common trailing padding."""

    def __init__(self, model: Any, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id

    @staticmethod
    def pad_token_of(model: Any) -> int | None:
        """The padding token id of `model`'s text tower if it masks padding and pools where trimming
        is exact; else None.

        Models outside open_clip declare it themselves with a `text_pad_token_id` attribute
        (clipsearch.model.chinese_clip does).
        """
        declared = getattr(model, "text_pad_token_id", None)
        if declared is not None:
            return int(declared)
        text = getattr(model, "text", None)
        if not isinstance(text, HFTextEncoder) or not isinstance(text.pooler, MeanPooler | ClsPooler):
            return None
        pad = getattr(text.config, "pad_token_id", None)
        return int(pad) if pad is not None else None

    def real_length(self, tokens: torch.Tensor) -> int:
        """One past the last real token of the batch's longest text (at least 1)."""
        real = tokens != self.pad_token_id
        positions = torch.arange(1, tokens.shape[1] + 1).expand_as(tokens)
        return max(int((positions * real).max()), 1)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)  # type: ignore[no-any-return]


def text_trimmer(model: Any) -> CausalTrimmer | PaddingTrimmer | None:
    """The trimmer that keeps `model`'s text tower exact, or None where none does."""
    if CausalTrimmer.supports(model):
        return CausalTrimmer(model)
    pad = PaddingTrimmer.pad_token_of(model)
    return PaddingTrimmer(model, pad) if pad is not None else None


class _CutTo:
    """`model`, except that its positional embedding and attention mask cover `length` positions."""

    def __init__(self, model: Any, length: int) -> None:
        self._model = model
        self.positional_embedding = model.positional_embedding[:length]
        self.attn_mask = model.attn_mask[:length, :length]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

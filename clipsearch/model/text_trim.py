"""Exact length trimming of a causal text tower: run it on the batch's real length, not the full context.

CLIP's text tower always runs its whole context (77 tokens), although a query is usually under
15. Where the tower is causal (each position attends only to itself and earlier ones) and pools
at the end-of-text token (the highest token id, hence "argmax"), the padding after that token
cannot change the pooled output, so the tower can stop at the batch's longest real sequence with
the same result (up to the floating-point order of a smaller matrix product).

Trimming is decided from the model's own attributes, never its name: open_clip's CLIP with
`text_pool_type == "argmax"`, a causal attention mask and a positional embedding for each
position. Every other text tower (SigLIP's pools the last position; CoCa's appends a class
token; custom text towers) runs its full context as before.
"""

from __future__ import annotations

from typing import Any

import torch


class TextTrimmer:
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


class _CutTo:
    """`model`, except that its positional embedding and attention mask cover `length` positions."""

    def __init__(self, model: Any, length: int) -> None:
        self._model = model
        self.positional_embedding = model.positional_embedding[:length]
        self.attn_mask = model.attn_mask[:length, :length]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

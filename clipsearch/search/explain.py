"""Why a result matched: each query term's share of its score, and where in an image a query lights up.

Term shares. A composed query is q = Σ wᵢ·tᵢ / ‖Σ wⱼ·tⱼ‖ (unit terms tᵢ), so an item's score splits
exactly into one share per term: cos(q, x) = Σᵢ wᵢ·cos(tᵢ, x) / ‖Σ wⱼ·tⱼ‖. The shares add up to the
cosine between the query and the item's stored vector, which is the result's score on an exact
index (an approximate index's score may differ from it by its approximation error).

Heatmaps. A ViT's last-layer patch tokens, projected like its pooled output, are poor local
features: each has attended to the whole image, and the residual stream carries global
information, so raw maps are noisy. We use the value path of the last block, as MaskCLIP does
(Zhou et al., ECCV 2022): that block's value projection and output projection applied to each
patch token on its own (no query-key mixing), without the block's residual and MLP (which
ClearCLIP, Lan et al. 2024, found to be where the noise comes from), then the final layer norm and
projection. The result is one vector per patch in the joint space; its cosine with the query is
the map. bench/explain.py measures how much better it localises than the raw tokens.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipsearch.errors import InvalidQuery
from clipsearch.search.query import WeightedPart

VALUE_PATH = "value-path"
"""MaskCLIP-style patch features (see the module's docstring)."""
RAW_TOKENS = "raw-tokens"
"""The last layer's patch tokens, normed and projected: what open_clip's output_tokens gives."""
METHODS = (VALUE_PATH, RAW_TOKENS)

OVERLAY_SIDE = 224
"""The overlay PNG's shorter side, in pixels: the model's view is scaled up to it when smaller."""


def term_shares(parts: Sequence[WeightedPart], item_vectors: np.ndarray) -> np.ndarray:
    """wᵢ·cos(tᵢ, x)/‖Σ wⱼ·tⱼ‖ for each item row x of `item_vectors` (m, d) and term i: float64 (m, n)."""
    if not parts:
        return np.zeros((len(item_vectors), 0))
    terms = np.stack([part.vector for part in parts]).astype(np.float64)
    weights = np.array([part.weight / part.norm for part in parts])
    return np.asarray((item_vectors.astype(np.float64) @ terms.T) * weights)


@dataclass(frozen=True)
class Heatmap:
    """A query's similarity to each patch of an image, as the model saw it (resized and cropped)."""

    grid: np.ndarray
    """Cosines, float32 (rows, columns): one per patch, in reading order."""
    view: np.ndarray
    """The model's input, uint8 (H, W, 3): what the grid covers."""
    method: str

    def overlay_png(self) -> bytes:
        return overlay_png(self.view, self.grid)


class PatchFeatures:
    """Per-patch embeddings in the joint space, from an open_clip VisionTransformer."""

    def __init__(self, model: Any) -> None:
        visual = getattr(model, "visual", None)  # Chinese-CLIP's towers are transformers', not open_clip's
        if visual is None:
            raise InvalidQuery("model", f"heatmaps need an open_clip ViT image tower; this model is a "
                                        f"{type(model).__name__}")
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer") \
                or getattr(visual, "attn_pool", None) is not None:
            raise InvalidQuery("model", f"heatmaps need an open_clip ViT image tower without attentional pooling; "
                                        f"this model's is a {type(visual).__name__}")
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        last = self.blocks[-1]
        self.method = VALUE_PATH if isinstance(getattr(last, "attn", None), torch.nn.MultiheadAttention) \
            and last.attn.in_proj_weight is not None and len(self.blocks) >= 2 else RAW_TOKENS
        self.patch_size = tuple(visual.patch_size) if hasattr(visual, "patch_size") else None

    @torch.inference_mode()
    def __call__(self, model_input: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """Unit patch embeddings, float32 (n, rows, columns, d), for normalised pixels (n, 3, H, W)."""
        method = method or self.method
        visual = self.visual
        if method == VALUE_PATH:
            tokens = self._value_path(model_input)
        else:
            tokens = visual._pool(visual.transformer(visual._embeds(model_input)))[1]
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        height, width = model_input.shape[-2:]
        rows, columns = _grid_shape(tokens.shape[1], height, width)
        return F.normalize(tokens.float(), dim=-1).reshape(len(tokens), rows, columns, -1)

    def _value_path(self, model_input: torch.Tensor) -> torch.Tensor:
        visual, last = self.visual, self.blocks[-1]
        before_last = visual.forward_intermediates(
            model_input, indices=[len(self.blocks) - 2], stop_early=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=True)
        hidden = before_last["image_intermediates"][0]  # patch tokens only: each is treated on its own
        width = hidden.shape[-1]
        values = F.linear(last.ln_1(hidden), last.attn.in_proj_weight[2 * width:],
                          None if last.attn.in_proj_bias is None else last.attn.in_proj_bias[2 * width:])
        normed: torch.Tensor = visual.ln_post(last.attn.out_proj(values))
        return normed


def similarity_grids(patches: torch.Tensor, query: np.ndarray) -> np.ndarray:
    """Cosine of each patch embedding (n, rows, columns, d) with a unit query (d,): float32 (n, rows, columns)."""
    vector = torch.as_tensor(query, dtype=torch.float32, device=patches.device)
    return (patches @ vector).cpu().numpy().astype(np.float32)


def overlay_png(view: np.ndarray, grid: np.ndarray, opacity: float = 0.55) -> bytes:
    """The view (uint8 (H, W, 3)) with the grid drawn over it as a heat colour map, as a PNG.

    Colours run from transparent-ish blue (the grid's minimum) to red (its maximum): a map shows
    where the query matches best within this image, not how well the image matches overall.
    """
    low, high = float(grid.min()), float(grid.max())
    normalised = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    heat = Image.fromarray(_colour_map(normalised)).resize((view.shape[1], view.shape[0]), Image.Resampling.BILINEAR)
    blended = Image.blend(Image.fromarray(view), heat, opacity)
    scale = max(1.0, OVERLAY_SIDE / min(view.shape[:2]))
    if scale > 1:
        blended = blended.resize((round(view.shape[1] * scale), round(view.shape[0] * scale)),
                                 Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    blended.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _colour_map(values: np.ndarray) -> np.ndarray:
    """A blue → cyan → yellow → red ramp for values in [0, 1]: uint8 (rows, columns, 3)."""
    stops = np.array([[40, 60, 200], [40, 200, 220], [250, 220, 40], [220, 30, 30]], dtype=np.float64)
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    lower = np.minimum(position.astype(int), len(stops) - 2)
    fraction = (position - lower)[..., None]
    return np.asarray((stops[lower] * (1 - fraction) + stops[lower + 1] * fraction).round(), dtype=np.uint8)


def _grid_shape(patches: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of `patches` tokens laid out over a height × width input."""
    columns = round(math.sqrt(patches * width / height))
    rows = patches // max(columns, 1)
    if rows * columns != patches:
        raise InvalidQuery("model", f"{patches} patch tokens do not form a grid over a {height}×{width} input")
    return rows, columns

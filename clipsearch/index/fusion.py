"""Item-side fusion: an image item searched by its image and its caption together. No model needed.

A fused collection (built with `--fuse image=0.7,caption=0.3`) stores each captioned image's
caption vector beside its image vector. A query q scores an image item

    w_image · cos(q, image) + w_caption · cos(q, caption)

with weights that sum to 1 (the collection's, or the query's own). An image without a caption
scores cos(q, image): its image stands in for its caption, so it ranks by the same scale as the
others, as if its caption said exactly what its picture shows.

The score is linear in both vectors, so one search computes it: every image item is the row
[image | caption] (2d wide; the image again where there is no caption), and a query the row
[w_image · q | w_caption · q]. Their inner product is the fused score, and queries with different
weights still share one matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch.errors import InvalidQuery

PARTS = ("image", "caption")


@dataclass(frozen=True)
class Fusion:
    """Weights of an image item's two vectors, normalised to sum to 1."""

    image: float
    caption: float

    @classmethod
    def of(cls, weights: Mapping[str, Any], field: str = "fusion") -> Fusion:
        """Checked weights from {"image": w, "caption": w} (a missing one is 0); InvalidQuery names the field."""
        if not isinstance(weights, Mapping):
            raise InvalidQuery(field, 'give an object such as {"image": 0.7, "caption": 0.3}')
        for name, value in weights.items():
            if name not in PARTS:
                raise InvalidQuery(f"{field}.{name}", "fusion weighs only 'image' and 'caption'")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidQuery(f"{field}.{name}", f"a weight must be a finite number of 0 or more, got {value!r}")
        image, caption = float(weights.get("image", 0)), float(weights.get("caption", 0))
        if image + caption <= 0:
            raise InvalidQuery(field, "at least one weight must be above 0")
        return cls(image / (image + caption), caption / (image + caption))

    @classmethod
    def parse(cls, text: str, field: str = "--fuse") -> Fusion:
        """Weights from 'image=0.7,caption=0.3'."""
        weights: dict[str, float] = {}
        for part in text.split(","):
            name, equals, value = part.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise InvalidQuery(field, f"give weights as image=0.7,caption=0.3, not {part!r}") from None
            if not equals:
                raise InvalidQuery(field, f"give weights as image=0.7,caption=0.3, not {part!r}")
        return cls.of(weights, field)

    def as_dict(self) -> dict[str, float]:
        return {"image": self.image, "caption": self.caption}

    def expand(self, queries: np.ndarray) -> np.ndarray:
        """Query rows (float32 (n, d)) as fused rows (n, 2d): [w_image · q | w_caption · q]."""
        return np.concatenate([self.image * queries, self.caption * queries], axis=-1).astype(np.float32)

    def parts(self, query: np.ndarray, image: np.ndarray, caption: np.ndarray | None) -> dict[str, float]:
        """What each vector adds to an item's fused score (they sum to it); without a caption, the
        image takes the caption's share too."""
        image_cosine = float(query @ image)
        if caption is None:
            return {"image": image_cosine}
        return {"image": self.image * image_cosine, "caption": self.caption * float(query @ caption)}


def fused_rows(image_vectors: np.ndarray, caption_vectors: np.ndarray, captioned: np.ndarray) -> np.ndarray:
    """Items as fused rows (float32 (m, 2d)): [image | caption], the image again where `captioned`
    (bool (m,)) is false."""
    captions = np.where(captioned[:, None], caption_vectors, image_vectors) if len(image_vectors) else caption_vectors
    return np.ascontiguousarray(np.concatenate([image_vectors, captions], axis=1), dtype=np.float32)


def fused_rows_by_id(image_ids: np.ndarray, image_vectors: np.ndarray, caption_ids: np.ndarray,
                     caption_vectors: np.ndarray) -> np.ndarray:
    """Images' fused rows, in the order of `image_ids`, with the caption vectors of the captioned
    ones given by id (`caption_ids` ascending)."""
    captioned = np.isin(image_ids, caption_ids)
    aligned = np.zeros_like(image_vectors)
    aligned[captioned] = caption_vectors[np.searchsorted(caption_ids, image_ids[captioned])]
    return fused_rows(image_vectors, aligned, captioned)

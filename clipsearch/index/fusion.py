"""Item-side fusion: an image item searched by its picture and its texts together, and a video by its
segments and its caption. No model needed.

A fused collection (built with `--fuse image=0.6,caption=0.2,ocr=0.2`) stores, beside each image
vector, the text tower's vector of each of the image's texts that the weights name: its caption,
and the text read in it (`--ocr`, clipsearch.store.ocr_text). A query q scores an image item

    w_image · cos(q, image) + w_caption · cos(q, caption) + w_ocr · cos(q, ocr)

with weights that sum to 1 (the collection's, or the query's own). An image without one of those
texts has its picture stand in for it: cos(q, image) in its place, so that it ranks on the same
scale as the others, as if the text said exactly what its picture shows.

The score is linear in every vector, so one search computes it: an image item is the row
[image | caption | ocr] (the image again in place of a missing text; only the parts the bundle
stores, its layout), and a query the row [w_image · q | w_caption · q | w_ocr · q]. Their inner
product is the fused score, and queries with different weights still share one matrix product.

A video item is scored by its best segment (clipsearch.store.segments); fused, by

    w_image · max_s cos(q, segment s) + w_caption · cos(q, caption),

which is the best over its segments of each segment's fused score, since its caption's term is the
same for all of them. So a video's segment is the row [segment | caption of its video] (the segment
again where the video has no caption, and always for `ocr`: no text is read in videos), and the one
search over such rows, with the best segment per video kept, scores videos as images are scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality

TEXT_PARTS = ("caption", "ocr")
"""An image item's texts that fusion can weigh, in the order of their blocks in a fused row."""
PARTS = ("image", *TEXT_PARTS)
FUSED_MODALITIES = (Modality.IMAGE, Modality.VIDEO)
"""The items fusion weighs with their texts: images, and videos (their segments, with their caption)."""

_EXAMPLE = '{"image": 0.6, "caption": 0.2, "ocr": 0.2}'


@dataclass(frozen=True)
class Fusion:
    """Weights of an image item's vectors, normalised to sum to 1. A text part whose weight is None is
    not in the layout: a bundle fused with these weights stores no vectors of it."""

    image: float
    caption: float | None = None
    ocr: float | None = None

    @classmethod
    def of(cls, weights: Mapping[str, Any], field: str = "fusion") -> Fusion:
        """Checked weights from {"image": w, "caption": w, "ocr": w}; a text part left out is not in the
        layout (the image is always); InvalidQuery names the field."""
        if not isinstance(weights, Mapping):
            raise InvalidQuery(field, f"give an object such as {_EXAMPLE}")
        for name, value in weights.items():
            if name not in PARTS:
                raise InvalidQuery(f"{field}.{name}", "fusion weighs only 'image', 'caption' and 'ocr'")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidQuery(f"{field}.{name}", f"a weight must be a finite number of 0 or more, got {value!r}")
        total = sum(float(value) for value in weights.values())
        if total <= 0:
            raise InvalidQuery(field, "at least one weight must be above 0")
        given = {name: float(weights[name]) / total for name in TEXT_PARTS if name in weights}
        return cls(float(weights.get("image", 0)) / total, **given)

    @classmethod
    def parse(cls, text: str, field: str = "--fuse") -> Fusion:
        """Weights from 'image=0.6,caption=0.2,ocr=0.2'."""
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

    @property
    def text_parts(self) -> tuple[str, ...]:
        """The texts in the layout, in TEXT_PARTS order."""
        return tuple(part for part in TEXT_PARTS if getattr(self, part) is not None)

    def weight(self, part: str) -> float:
        value: float | None = getattr(self, part)
        return value or 0.0

    def as_dict(self) -> dict[str, float]:
        """The layout's weights: what a manifest records and `of` reads back."""
        return {"image": self.image, **{part: self.weight(part) for part in self.text_parts}}

    def laid_out_as(self, stored: Fusion, field: str = "fusion") -> Fusion:
        """These weights (a query's) over the layout of `stored` (a bundle's): a text part it does not
        store may be left out or weighed 0, never more (InvalidQuery names it)."""
        for part in TEXT_PARTS:
            if self.weight(part) > 0 and part not in stored.text_parts:
                raise InvalidQuery(f"{field}.{part}", f"this bundle stores no {part} vectors; it fuses "
                                   f"{', '.join(stored.as_dict())}: build it with --fuse naming {part} to weigh it")
        return Fusion(self.image, **{part: self.weight(part) for part in stored.text_parts})

    def expand(self, queries: np.ndarray) -> np.ndarray:
        """Query rows (float32 (n, d)) as fused rows (n, (1 + texts) d): [w_image · q | w_text · q …]."""
        weights = (self.image, *(self.weight(part) for part in self.text_parts))
        return np.concatenate([weight * queries for weight in weights], axis=-1).astype(np.float32)

    def scores(self, query: np.ndarray, images: np.ndarray, texts: Mapping[str, np.ndarray]) -> np.ndarray:
        """The fused scores (float32 (m,)) of rows `images` (m, d) that share the texts `texts`: a video's
        segments, with its caption."""
        image_weight, added = self._shares(query, texts)
        scores: np.ndarray = (image_weight * (images @ query) + sum(added.values())).astype(np.float32)
        return scores

    def parts(self, query: np.ndarray, image: np.ndarray, texts: Mapping[str, np.ndarray]) -> dict[str, float]:
        """What each vector adds to an item's fused score (they sum to it): the image takes the share
        of each text the item lacks; a text weighed 0 is left out."""
        image_weight, added = self._shares(query, texts)
        return {"image": image_weight * float(query @ image), **added}

    def _shares(self, query: np.ndarray, texts: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
        """The image's weight (its own, and that of each text the item lacks), and what each of the
        item's texts weighed above 0 adds."""
        added = {part: self.weight(part) * float(query @ texts[part])
                 for part in self.text_parts if part in texts and self.weight(part) > 0}
        return self.image + sum(self.weight(part) for part in self.text_parts if part not in texts), added


@dataclass(frozen=True)
class TextVectors:
    """One text part's vectors for some image items: rows aligned with the items', zero rows where
    `present` (bool (m,)) is false."""

    vectors: np.ndarray
    present: np.ndarray

    def row(self, row: int) -> np.ndarray | None:
        vector: np.ndarray = self.vectors[row]
        return vector if self.present[row] else None


def fused_rows(text_parts: Sequence[str], image_vectors: np.ndarray, texts: Mapping[str, TextVectors]
               ) -> np.ndarray:
    """Items as fused rows (float32 (m, (1 + len(text_parts)) d)): [image | text …], the image again
    where a text is not present (or `texts` has none of that part)."""
    blocks = [image_vectors]
    for part in text_parts:
        found = texts.get(part)
        blocks.append(image_vectors if found is None or not len(image_vectors) else
                      np.where(found.present[:, None], found.vectors, image_vectors))
    return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def fused_rows_by_id(text_parts: Sequence[str], image_ids: np.ndarray, image_vectors: np.ndarray,
                     texts: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Images' fused rows, in the order of `image_ids`, with each text part's vectors given by id
    (part → (ids ascending, vectors))."""
    return fused_rows(text_parts, image_vectors, {part: aligned(image_ids, image_vectors.shape[1], *held)
                                                  for part, held in texts.items()})


def aligned(image_ids: np.ndarray, dim: int, held_ids: np.ndarray, held_vectors: np.ndarray) -> TextVectors:
    """The vectors held by id (`held_ids` ascending) laid out in the order of `image_ids`."""
    present = np.isin(image_ids, held_ids)
    vectors = np.zeros((len(image_ids), dim), np.float32)
    vectors[present] = held_vectors[np.searchsorted(held_ids, image_ids[present])]
    return TextVectors(vectors, present)

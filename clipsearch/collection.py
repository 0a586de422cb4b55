"""A loaded bundle's items as the search service sees them: lookup by id, stored vectors, the
image files it may serve, and search results resolved to items."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch import index as faiss_index
from clipsearch.bundle import Bundle
from clipsearch.errors import ImageDecodeError, InvalidQuery, ItemNotFound
from clipsearch.images import DEFAULT_MAX_PIXELS, read_image_file
from clipsearch.item_store import Item
from clipsearch.modality import Modality
from clipsearch.topk import TopK


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float
    duplicates: tuple[int, ...] = ()
    """Ids of lower-ranked near-duplicates collapsed into this hit (with dedup)."""


class Collection:
    """Read access to a bundle's items by id; `field` names where the caller's id came from."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    @property
    def modalities(self) -> set[Modality]:
        """The modalities with at least one item."""
        return {modality for modality, index in self.bundle.indices.items() if index.ntotal > 0}

    def count(self, modality: Modality) -> int:
        index = self.bundle.indices.get(modality)
        return 0 if index is None else int(index.ntotal)

    def stored_vectors(self, modality: Modality, item_ids: np.ndarray) -> np.ndarray:
        """The vectors (float32 (m, d)) the bundle holds for `item_ids` (int64 (m,)), all of `modality`."""
        return faiss_index.reconstruct_many(self.bundle.indices[modality], item_ids)

    def item(self, item_id: int, field: str = "id") -> Item:
        found = self.bundle.items.get(item_id)
        if found is None:
            raise ItemNotFound(item_id, field)
        return found

    def stored_vector(self, item_id: int, field: str = "item_id") -> np.ndarray:
        """The vector (float32 (d,)) the bundle holds for an item."""
        item = self.item(item_id, field)
        vector = faiss_index.reconstruct(self.bundle.indices[item.modality], item_id)
        if vector is None:
            raise ItemNotFound(item_id, field, "the item has no stored vector")
        return vector

    def image_path(self, item_id: int, field: str = "id") -> Path:
        """The stored file of an image item; only paths recorded in the bundle are ever returned."""
        item = self.item(item_id, field)
        if item.modality is not Modality.IMAGE:
            raise InvalidQuery(field, f"item {item_id} is a {item.modality.value}, not an image")
        path = Path(item.uri)
        if not path.is_file():
            raise ItemNotFound(item_id, field, "its image file is no longer at the path recorded in the bundle")
        # The indexer records fully resolved paths. If that no longer resolves to itself, a symbolic
        # link was put in its place (or above it) since: it may point anywhere, so nothing is served.
        if path.resolve() != path:
            raise ItemNotFound(item_id, field, "its recorded path now passes through a symbolic link; not served")
        return path

    def read_image(self, item_id: int, field: str = "id", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """An image item's picture, decoded; a file that no longer decodes is an item gone, naming `field`."""
        path = self.image_path(item_id, field)
        try:
            return read_image_file(path, max_pixels)
        except ImageDecodeError as error:
            raise ItemNotFound(item_id, field, f"its image file no longer decodes ({error.reason})") from error

    def hits(self, found: list[TopK]) -> list[list[Hit]]:
        """One-row search results as hits: ids resolved to items (no result, id -1, is left out)."""
        items = self.bundle.items.get_many([int(item_id) for result in found for item_id in result.ids[0]
                                            if item_id >= 0])
        return [[Hit(items[int(item_id)], float(score))
                 for score, item_id in zip(result.scores[0], result.ids[0], strict=True)
                 if item_id >= 0 and int(item_id) in items]
                for result in found]

"""A loaded bundle's items as the search service sees them: lookup by id, stored vectors, the
image files it may serve, and search results resolved to items. With a live log
(clipsearch.store.live), the bundle is the base and the log's latest snapshot is laid over it: live
items first, hidden base items gone."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.errors import ImageDecodeError, InvalidQuery, ItemNotFound
from clipsearch.index import faiss_index
from clipsearch.index.fusion import fused_rows_by_id
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.store import segments
from clipsearch.store.bundle import Bundle
from clipsearch.store.items import Item, sort_value
from clipsearch.store.live import LiveLog, LiveState
from clipsearch.store.segments import SegmentSpan
from clipsearch.util.images import read_image_file


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float
    duplicates: tuple[int, ...] = ()
    """Ids of lower-ranked near-duplicates collapsed into this hit (with dedup)."""
    ranks: dict[str, int] | None = None
    """For keyword and hybrid searches: the hit's rank (from 1) in each list it came from
    ('vector', 'keyword'; clipsearch.search.hybrid)."""
    fused: dict[str, float] | None = None
    """For fused image searches: what the image and each of its texts (caption, ocr) add to the
    score (clipsearch.index.fusion.Fusion.parts)."""
    ocr_matches: tuple[dict[str, Any], ...] = ()
    """For a text query's image hits: the lines read from the image that hold the query's words,
    with their boxes (clipsearch.store.ocr_text.matching_lines)."""
    segment: SegmentSpan | None = None
    """For a video hit: the moment that scored it (its best segment, or the one found)."""
    moments: tuple[tuple[SegmentSpan, float], ...] = ()
    """For a video hit of a vector query: its best segments with their scores, in time order."""


class Collection:
    """Read access to a bundle's items by id; `field` names where the caller's id came from."""

    def __init__(self, bundle: Bundle, live: LiveLog | None = None) -> None:
        self.bundle = bundle
        self.live = live
        self.state = LiveState(generation=-1)
        self._refresh_lock = threading.Lock()
        self._timed_items: dict[Modality, int] = {}
        """How many base items each timed modality has (the base never changes), counted once."""
        self.refresh()

    def refresh(self) -> LiveState:
        """The live log's latest snapshot (read again only when its generation moved)."""
        if self.live is not None and self.live.generation() != self.state.generation:
            with self._refresh_lock:
                if self.live.generation() != self.state.generation:
                    # Only the rows written since this snapshot are read (the first time, all of them).
                    self.state = self.live.state(self.state if self.state.generation >= 0 else None)
        return self.state

    @property
    def modalities(self) -> set[Modality]:
        """The modalities with at least one item."""
        return {modality for modality in Modality if self.count(modality) > 0}

    def count(self, modality: Modality, state: LiveState | None = None) -> int:
        state = state or self.state
        live = state.segment(modality).ids
        return self.base_count(modality) - len(state.removed_of(modality)) + \
            (segments.count_items(live) if modality.timed else len(live))

    def base_count(self, modality: Modality) -> int:
        """How many base items of `modality` there are (a video's segments are one item)."""
        index = self.bundle.indices.get(modality)
        if index is None:
            return 0
        if modality.timed:
            if modality not in self._timed_items:
                self._timed_items[modality] = segments.count_items(self.bundle.base_ids(modality))
            return self._timed_items[modality]
        return int(index.ntotal)

    def stored_vectors(self, modality: Modality, item_ids: np.ndarray, state: LiveState | None = None) -> np.ndarray:
        """The vectors (float32 (m, d)) held for `item_ids` (int64 (m,)), all of `modality`; a video's (or
        a recording's) is the mean of its segments', of unit length."""
        state = state or self.state
        if modality.timed:
            return self._timed_vectors(modality, np.asarray(item_ids, dtype=np.int64), state)
        segment = state.segment(modality)
        live = np.isin(item_ids, segment.ids)
        vectors = np.zeros((len(item_ids), self.bundle.manifest.dim_of(modality)), dtype=np.float32)
        if live.any():
            vectors[live] = segment.vectors[np.searchsorted(segment.ids, item_ids[live])]
        if (~live).any():
            vectors[~live] = self.bundle.base_vectors(modality, item_ids[~live])
        return vectors

    def segment_vectors(self, item_id: int, state: LiveState | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The segment ids and vectors (float32 (m, d)) of a video or a recording, by position."""
        state = state or self.state
        modality = self.item(item_id, state=state).modality
        live = state.segment(modality)
        if item_id in state.items:
            held = segments.of_items(np.array([item_id]), live.ids)
            return held, live.vectors[np.searchsorted(live.ids, held)]
        held = segments.segment_ids(item_id, len(segments.spans_of(self.item(item_id, state=state).extra, modality)))
        return held, self.bundle.base_vectors(modality, held)

    def scored_vector(self, hit: Hit, state: LiveState | None = None) -> np.ndarray:
        """The vector a hit was scored by: a video's (or a recording's), its segment's."""
        if hit.segment is not None:
            vector: np.ndarray = self.segment_vectors(hit.item.id, state)[1][hit.segment.position]
            return vector
        return self.stored_vector(hit.item.id)

    def timed_vector(self, item_id: int, state: LiveState | None = None) -> np.ndarray:
        """A video's or a recording's one vector: the mean of its segments', of unit length (what a
        query by the item, or a comparison of two of them, uses)."""
        _, vectors = self.segment_vectors(item_id, state)
        unit: np.ndarray = _unit_means(vectors, np.zeros(1, dtype=np.int64))[0]
        return unit

    def _timed_vectors(self, modality: Modality, item_ids: np.ndarray, state: LiveState) -> np.ndarray:
        """timed_vector of each of `item_ids` (videos or recordings, all of `modality`), read together:
        the base items' records in one lookup and their segments' vectors in one read (a deduplicated
        search compares thousands of them), the live items' from the snapshot."""
        vectors = np.zeros((len(item_ids), self.bundle.manifest.dim_of(modality)), dtype=np.float32)
        live = np.fromiter((int(item_id) in state.items for item_id in item_ids), dtype=bool, count=len(item_ids))
        if live.any():
            held = state.segment(modality)
            items, firsts = np.unique(segments.items_of(held.ids), return_index=True)
            found = np.searchsorted(items, item_ids[live])
            if (found >= len(items)).any() or (items[np.minimum(found, len(items) - 1)] != item_ids[live]).any():
                raise ItemNotFound(int(item_ids[live][0]), "id", f"it holds no {modality.value} segments")
            vectors[live] = _unit_means(held.vectors, firsts)[found]
        base = item_ids[~live]
        if len(base):
            records = self.bundle.items.get_many([int(item_id) for item_id in base])
            counts = []
            for item_id in base:
                record = records.get(int(item_id))
                if record is None or record.modality is not modality or state.is_removed(int(item_id)):
                    raise ItemNotFound(int(item_id), "id")
                counts.append(len(segments.spans_of(record.extra, modality)))
            held_ids = np.concatenate([segments.segment_ids(int(item_id), count)
                                       for item_id, count in zip(base, counts, strict=True)])
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            vectors[~live] = _unit_means(self.bundle.base_vectors(modality, held_ids), starts)
        return vectors

    def item(self, item_id: int, field: str = "id", state: LiveState | None = None) -> Item:
        state = state or self.state
        found = state.items.get(item_id)
        if found is None and not state.is_removed(item_id):
            found = self.bundle.items.get(item_id)
        if found is None:
            raise ItemNotFound(item_id, field)
        return found

    def stored_vector(self, item_id: int, field: str = "item_id") -> np.ndarray:
        """The vector (float32 (d,)) held for an item."""
        state = self.state
        item = self.item(item_id, field, state)
        if item.modality.timed:
            return self.timed_vector(item_id, state)
        vector = state.segment(item.modality).vector(item_id) if item_id in state.items else \
            self.bundle.base_vector(item.modality, item_id)
        if vector is None:
            raise ItemNotFound(item_id, field, "the item has no stored vector")
        return np.asarray(vector, dtype=np.float32)

    def text_vectors(self, item_id: int, state: LiveState | None = None) -> dict[str, np.ndarray]:
        """The vectors a fused bundle holds of an image item's texts (a video's caption), by fusion text
        part (a text the item lacks has none; clipsearch.index.fusion)."""
        state = state or self.state
        if item_id in state.items:
            return state.segment(state.items[item_id].modality).text_vectors(item_id)
        if state.is_removed(item_id):
            return {}
        return {part: vector for part, held in self.bundle.texts.items()
                if (vector := faiss_index.reconstruct(held, item_id)) is not None}

    def base_fused_rows(self, text_parts: Sequence[str], image_ids: np.ndarray, image_vectors: np.ndarray
                        ) -> np.ndarray:
        """The base's image items as fused rows, in the order given (clipsearch.index.fusion.fused_rows);
        a video's segments, given with their video's id in `image_ids`, each with its video's texts."""
        texts = {}
        for part in text_parts:
            held = faiss_index.ids_of(self.bundle.texts[part])
            texts[part] = (held, faiss_index.reconstruct_many(self.bundle.texts[part], held))
        return fused_rows_by_id(text_parts, image_ids, image_vectors, texts)

    def file_path(self, item_id: int, field: str = "id", modality: Modality = Modality.IMAGE) -> Path:
        """The stored file of an image item (or of a video or sound item, with `modality`); only paths
        recorded in the bundle are ever returned."""
        item = self.item(item_id, field)
        if item.modality is not modality:
            article = "an" if modality in (Modality.IMAGE, Modality.AUDIO) else "a"
            raise InvalidQuery(field, f"item {item_id} is a {item.modality.value}, not {article} {modality.value}")
        path = Path(item.uri)
        if not path.is_file():
            raise ItemNotFound(item_id, field, f"its {modality.value} file is no longer at the path recorded in the "
                                               "bundle")
        # The indexer records fully resolved paths. If that no longer resolves to itself, a symbolic
        # link was put in its place (or above it) since: it may point anywhere, so nothing is served.
        if path.resolve() != path:
            raise ItemNotFound(item_id, field, "its recorded path now passes through a symbolic link; not served")
        return path

    def read_image(self, item_id: int, field: str = "id", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """An image item's picture, decoded; a file that no longer decodes is an item gone, naming `field`."""
        path = self.file_path(item_id, field)
        try:
            return read_image_file(path, max_pixels)
        except ImageDecodeError as error:
            raise ItemNotFound(item_id, field, f"its image file no longer decodes ({error.reason})") from error

    def sort_values(self, item_ids: Sequence[int], key: str, state: LiveState | None = None
                    ) -> list[str | float | None]:
        """The value `key` names in each item, for sorting (clipsearch.store.items.sort_value), in the
        order given: live items read in the snapshot, base items by one query that reads only that value."""
        state = state or self.state
        base = self.bundle.items.sort_values([item_id for item_id in item_ids if item_id not in state.items], key)
        return [sort_value(state.items[item_id], key) if item_id in state.items else base.get(item_id)
                for item_id in item_ids]

    def hits(self, found: list[TopK], state: LiveState | None = None, of_segments: bool = False) -> list[list[Hit]]:
        """One-row search results as hits: ids resolved to items (no result, id -1, is left out); with
        `of_segments`, the ids are video segments' (clipsearch.store.segments), each a hit with its span."""
        state = state or self.state
        rows = [result.ids[0][result.ids[0] >= 0] for result in found]
        item_ids = [segments.items_of(ids) if of_segments else ids for ids in rows]
        wanted = [int(item_id) for ids in item_ids for item_id in ids]
        items = self.bundle.items.get_many([item_id for item_id in wanted if item_id not in state.items])
        items.update({item_id: state.items[item_id] for item_id in wanted if item_id in state.items})
        return [[Hit(items[int(item_id)], float(score),
                     segment=segments.span_of(items[int(item_id)].extra, int(vector_id), items[int(item_id)].modality)
                     if of_segments else None)
                 for score, vector_id, item_id in zip(result.scores[0][result.ids[0] >= 0], ids, owners, strict=True)
                 if int(item_id) in items]
                for result, ids, owners in zip(found, rows, item_ids, strict=True)]


def _unit_means(vectors: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The mean of each run of rows of `vectors` (runs starting at `starts`, ascending, the last
    running to the end), of unit length, float32 (len(starts), d); summed in float64."""
    sums = np.add.reduceat(vectors.astype(np.float64), starts, axis=0)
    counts = np.diff(np.append(starts, len(vectors)))[:, None]
    means = sums / counts
    norms = np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    unit: np.ndarray = (means / norms).astype(np.float32)
    return unit

"""Snapshots of a live log: the live items' ids and vectors per modality and the hidden base ids,
as of one generation. A search uses one snapshot from start to end, so it never sees half of a
write; a newer snapshot is made from an older one and the rows written since (`replay`)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from clipsearch.index.fusion import FUSED_MODALITIES, TEXT_PARTS, TextVectors, fused_rows
from clipsearch.modality import Modality
from clipsearch.store import keywords
from clipsearch.store.filters import Filter
from clipsearch.store.fused_texts import part_text
from clipsearch.store.items import Item, items_in_memory
from clipsearch.store.segments import SEGMENT_BITS, count_items, items_of, segment_ids, spans_of


@dataclass(frozen=True)
class NewItem:
    """An item to write: its key (unique per modality), what it is, and its unit vector (float32 (d,))."""

    key: str
    modality: Modality
    uri: str
    text: str | None
    extra: dict[str, Any]
    content_hash: str
    vector: np.ndarray
    """A video's: its segments' vectors, float32 (m, d), by position (clipsearch.store.segments)."""
    text_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    """In a fused bundle, an image's vectors of its caption and read text (a video's of its caption),
    by fusion text part (clipsearch.index.fusion); a text it lacks has none."""


def with_text_vectors(items: Sequence[NewItem], text_parts: Sequence[str],
                      embed_texts: Callable[[list[str]], Sequence[np.ndarray]]) -> list[NewItem]:
    """`items` with every image (and video) given the vector of each of its texts of `text_parts` it has
    no vector for yet, all embedded in one call: what a fused bundle stores for each
    (clipsearch.index.fusion)."""
    wanting = [(number, part, text) for number, item in enumerate(items) if item.modality in FUSED_MODALITIES
               for part in text_parts
               if part not in item.text_vectors and (text := part_text(part, item.text, item.extra))]
    vectors = embed_texts([text for _, _, text in wanting]) if wanting else []
    made = list(items)
    for (number, part, _), vector in zip(wanting, vectors, strict=True):
        made[number] = replace(made[number], text_vectors={**made[number].text_vectors,
                                                           part: np.asarray(vector, dtype=np.float32)})
    return made


@dataclass(frozen=True)
class Segment:
    """The live items of one modality: ids (int64 (m,), ascending) and their vectors (float32 (m, d)),
    and for images in a fused bundle the vectors of their texts, by fusion text part. A video's
    segments are rows of their own, under their segment ids (clipsearch.store.segments), each with
    its video's texts (`timed`)."""

    ids: np.ndarray
    vectors: np.ndarray
    texts: dict[str, TextVectors] = field(default_factory=dict)
    timed: bool = False

    def fused_rows(self, text_parts: Sequence[str]) -> np.ndarray:
        """These items as fused rows (clipsearch.index.fusion.fused_rows), (m, (1 + texts) d)."""
        if not len(self.ids):
            return np.zeros((0, (1 + len(text_parts)) * self.vectors.shape[1]), np.float32)
        return fused_rows(text_parts, self.vectors, self.texts)

    def text_vectors(self, item_id: int) -> dict[str, np.ndarray]:
        """The vectors of a live image's (or video's) texts, by part (empty for an item not here)."""
        row_id = item_id << SEGMENT_BITS if self.timed else item_id  # a video's texts are on each of its rows
        row = int(np.searchsorted(self.ids, row_id))
        if row >= len(self.ids) or self.ids[row] != row_id:
            return {}
        return {part: vector for part, texts in self.texts.items() if (vector := texts.row(row)) is not None}

    def vector(self, item_id: int) -> np.ndarray | None:
        row = int(np.searchsorted(self.ids, item_id))
        return self.vectors[row] if row < len(self.ids) and self.ids[row] == item_id else None


@dataclass(frozen=True, eq=False)
class LiveState:
    """One consistent view of the live changes, as of `generation`."""

    generation: int
    removed: dict[Modality, np.ndarray] = field(default_factory=dict)
    """Hidden base ids per modality (int64, ascending). Only ever grows: a base item never comes back."""
    segments: dict[Modality, Segment] = field(default_factory=dict)
    items: dict[int, Item] = field(default_factory=dict)
    """The live items themselves, so that results resolve within the same snapshot."""
    _filtered: dict[tuple[Modality, str], np.ndarray] = field(default_factory=dict)
    _databases: dict[str, sqlite3.Connection] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def changes(self) -> int:
        """Live items and hidden base items: what a compaction would fold in (clipsearch.store.compaction)."""
        return sum(count_items(segment.ids) if modality.timed else len(segment.ids)
                   for modality, segment in self.segments.items()) + sum(len(ids) for ids in self.removed.values())

    @property
    def vector_bytes(self) -> int:
        """The bytes of the live items' vectors held in memory (each image's texts' too, when fused)."""
        return sum(segment.vectors.nbytes + sum(part.vectors.nbytes for part in segment.texts.values())
                   for segment in self.segments.values())

    def segment(self, modality: Modality) -> Segment:
        return self.segments.get(modality) or Segment(np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
                                                      timed=modality.timed)

    def removed_of(self, modality: Modality) -> np.ndarray:
        return self.removed.get(modality, np.zeros(0, np.int64))

    def matching_ids(self, modality: Modality, filter: Filter) -> np.ndarray:
        """This snapshot's live items of `modality` that pass `filter` (int64, ascending), computed once
        per filter in an in-memory copy of the snapshot's items: the same SQL as the base's."""
        key = (modality, filter.canonical)
        with self._lock:
            if key not in self._filtered:
                found = self._memory().execute(f"SELECT id FROM items WHERE modality = ? AND ({filter.sql}) "
                                               "ORDER BY id", (modality.value, *filter.params)).fetchall()
                self._filtered[key] = np.array([row[0] for row in found], dtype=np.int64)
            return self._filtered[key]

    def keyword_search(self, query: keywords.KeywordQuery, modality: Modality, fields: Sequence[str],
                       filter: Filter | None, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `limit` live items of `modality` for a keyword query (clipsearch.store.keywords.search),
        scored within this snapshot's live items; keyword tables are made on the first such search."""
        with self._lock:
            memory = self._memory()
            if not keywords.has_tables(memory):
                keywords.create_tables(memory)
                keywords.index_items(memory, memory.execute("SELECT id, text, extra FROM items"), fields)
            condition, params = ("1", ()) if filter is None else (filter.sql, filter.params)
            return keywords.search(memory, query, modality, condition, params, limit)

    def _memory(self) -> sqlite3.Connection:
        """This snapshot's live items in an in-memory SQLite database, made once (hold `_lock`)."""
        if "items" not in self._databases:
            self._databases["items"] = items_in_memory(self.items.values())
        return self._databases["items"]

    def is_removed(self, item_id: int) -> bool:
        return any(_contains(ids, item_id) for ids in self.removed.values())


def replay(since: LiveState | None, generation: int, removed_rows: list[Any], item_rows: list[Any],
           dropped_rows: list[Any], dim: int) -> LiveState:
    """The snapshot at `generation`: `since` (None: an empty log) with the rows written after it laid
    over it. `item_rows` hold (id, modality, uri, text, extra, content_hash, vector, generation, and
    one text vector per TEXT_PARTS); `dropped_rows` (id, generation); `removed_rows` (id, modality)."""
    removed = {modality: np.union1d(since.removed_of(modality) if since is not None else np.zeros(0, np.int64),
                                    [row[0] for row in removed_rows if row[1] == modality.value]).astype(np.int64)
               for modality in Modality}
    items = dict(since.items) if since is not None else {}
    vectors: dict[int, np.ndarray] = {} if since is None else {
        int(item_id): segment.vectors[row] for modality, segment in since.segments.items()
        if not modality.timed for row, item_id in enumerate(segment.ids)}
    for timed in (modality for modality in Modality if modality.timed):  # each one's rows back into its (m, d)
        rows_of = since.segment(timed) if since is not None else None
        if rows_of is None or not len(rows_of.ids):
            continue
        owners = items_of(rows_of.ids)  # ascending: each item's rows lie together
        firsts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        vectors.update({int(item_id): rows for item_id, rows in zip(owners[firsts], np.split(rows_of.vectors,
                                                                                          firsts[1:]), strict=True)})
    texts: dict[int, dict[str, np.ndarray]] = {} if since is None else {
        int(item_id): held for segment in since.segments.values()
        for item_id in (np.unique(items_of(segment.ids)) if segment.timed else segment.ids)
        if (held := segment.text_vectors(int(item_id)))}
    # Replay in the order written: a drop after a write removes the item, a write after a drop restores it.
    events = sorted([(row[7], 1, row) for row in item_rows] + [(row[1], 0, row) for row in dropped_rows],
                    key=lambda event: (event[0], event[1]))
    for _, is_write, row in events:
        texts.pop(row[0], None)
        if is_write:
            item = items[row[0]] = Item(row[0], Modality(row[1]), row[2], row[3], json.loads(row[4]), row[5])
            vector = np.frombuffer(row[6], dtype=np.float32)
            # A timed item's rows are its segments, as many as its spans (a sound's are the audio model's size).
            if item.modality.timed:
                vector = vector.reshape(len(spans_of(item.extra, item.modality)), -1)
            vectors[row[0]] = vector
            held = {part: np.frombuffer(blob, dtype=np.float32)
                    for part, blob in zip(TEXT_PARTS, row[8:], strict=True) if blob is not None}
            if held:
                texts[row[0]] = held
        else:
            items.pop(row[0], None)
            vectors.pop(row[0], None)
    segments: dict[Modality, Segment] = {}
    for modality in Modality:
        ids = np.array(sorted(item_id for item_id, item in items.items() if item.modality is modality),
                       dtype=np.int64)
        if modality.timed:
            segments[modality] = _timed_segment(ids, vectors, texts, dim)
            continue
        stacked = np.stack([vectors[int(item_id)] for item_id in ids]) if len(ids) else \
            np.zeros((0, dim), np.float32)
        segments[modality] = Segment(ids, stacked, _text_vectors(ids, stacked, texts))
    return LiveState(generation, removed, segments, items)


def _timed_segment(item_ids: np.ndarray, vectors: dict[int, np.ndarray], texts: dict[int, dict[str, np.ndarray]],
                   dim: int) -> Segment:
    """The live videos (or sounds) `item_ids` (ascending) as rows of their segments, under segment ids
    (ascending too), each row with its item's text vectors."""
    if not len(item_ids):
        return Segment(np.zeros(0, np.int64), np.zeros((0, dim), np.float32), timed=True)
    held = [vectors[int(item_id)] for item_id in item_ids]
    ids = np.concatenate([segment_ids(int(item_id), len(rows)) for item_id, rows in zip(item_ids, held, strict=True)])
    stacked = np.concatenate(held).astype(np.float32, copy=False)
    return Segment(ids, stacked, _text_vectors(items_of(ids), stacked, texts), timed=True)


def _text_vectors(ids: np.ndarray, vectors: np.ndarray, texts: dict[int, dict[str, np.ndarray]]
                  ) -> dict[str, TextVectors]:
    """The segment's text vectors by part, a row for each of `ids` (item ids: a video's once per
    segment); only parts some item has (any bundle not fused: none, and no matrix of zeros)."""
    made = {}
    for part in TEXT_PARTS:
        present = np.array([part in texts.get(int(item_id), {}) for item_id in ids], dtype=bool)
        if present.any():
            matrix = np.zeros_like(vectors)
            for row in np.flatnonzero(present):
                matrix[row] = texts[int(ids[row])][part]
            made[part] = TextVectors(matrix, present)
    return made


def _contains(ids: np.ndarray, item_id: int) -> bool:
    row = int(np.searchsorted(ids, item_id))
    return row < len(ids) and int(ids[row]) == item_id


def members(candidates: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The `candidates` that are in `ids` (ascending): a binary search each, not a sort of `ids`."""
    if not len(candidates) or not len(ids):
        return np.zeros(0, np.int64)
    rows = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
    found: np.ndarray = candidates[ids[rows] == candidates]
    return found

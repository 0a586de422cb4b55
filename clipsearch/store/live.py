"""Live changes to a served bundle: items added, replaced and deleted without a rebuild.

The bundle stays the immutable base. Changes go to `live.sqlite` in the bundle directory, SQLite
in WAL mode with a full sync on every commit, so an acknowledged write survives kill -9 and power
loss, and a write is one transaction: it is all there or not at all.

    items       items added or replaced: the same columns as the base's items.sqlite plus their
                `key`, their vector (float32 bytes), when they were written, and in a fused
                bundle an image's caption vector (clipsearch.index.fusion)
    removed     base items hidden: deleted, or replaced by a row of `items` with the same id
    dropped     live items deleted since they were written
                (every row of these three records the generation that wrote it, so a reader
                catches up by reading only what changed since its snapshot)
    base_keys   each base item's key (its uri), so that a write by key finds a base item at once
    state       `generation`, raised by every committed write, `next_id`, and `folded`: how many
                changes compactions have folded into the base (clipsearch.store.compaction)
    file_stats  size, modification time and content hash of each source file at the last sync
                (clipsearch.ingest.sync), so that an unchanged file is not read again, and the generation
                that wrote them

A reader (every server worker) takes a `LiveState` snapshot: the live items' ids and vectors per
modality and the hidden base ids; a newer snapshot is made from an older one and the rows written
since. A search uses one snapshot from start to end, so it never sees
half of a write. Workers compare the stored generation with their snapshot's before each search
(one indexed read), so a write through any worker, or by another process, is seen by the next
search everywhere.

Keys are unique per modality: a write with a key that exists replaces that item and keeps its id.
A base item's key is its uri.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import BundleError, BundleReplaced
from clipsearch.index.fusion import fused_rows
from clipsearch.modality import Modality
from clipsearch.store import keywords
from clipsearch.store.filters import Filter
from clipsearch.store.items import Item, ItemStore
from clipsearch.store.manifest import bundle_lock

LIVE_FILE = "live.sqlite"
LIVE_IMAGES = "live-images"
"""Where uploaded image files are kept, beside the log, named by content hash (clipsearch.search.writes)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    modality TEXT NOT NULL,
    uri TEXT NOT NULL,
    text TEXT,
    extra TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    written_at TEXT NOT NULL,
    generation INTEGER NOT NULL,
    caption_vector BLOB
);
CREATE INDEX IF NOT EXISTS items_by_generation ON items (generation);
CREATE UNIQUE INDEX IF NOT EXISTS items_by_key ON items (modality, key);
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, modality TEXT NOT NULL, generation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_by_generation ON removed (generation);
CREATE TABLE IF NOT EXISTS dropped (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS dropped_by_generation ON dropped (generation);
CREATE TABLE IF NOT EXISTS base_keys (
    modality TEXT NOT NULL, key TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (modality, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS file_stats (
    uri TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, content_hash TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""
_ITEM_COLUMNS = "id, modality, uri, text, extra, content_hash"
KEYS_AT_ONCE = 10_000
"""Keys a compaction copies into the new log per step (LiveLog.start_fold)."""


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
    caption_vector: np.ndarray | None = None
    """A captioned image's caption vector, in a fused bundle (clipsearch.index.fusion)."""


def with_caption_vectors(items: Sequence[NewItem], embed_texts: Callable[[list[str]], Sequence[np.ndarray]]
                         ) -> list[NewItem]:
    """`items` with every captioned image given its caption's vector, all embedded in one call: what
    a fused bundle stores for each (clipsearch.index.fusion)."""
    wanting = [number for number, item in enumerate(items)
               if item.modality is Modality.IMAGE and (item.text or "").strip()]
    vectors = embed_texts([items[number].text or "" for number in wanting]) if wanting else []
    made = list(items)
    for number, vector in zip(wanting, vectors, strict=True):
        made[number] = replace(made[number], caption_vector=np.asarray(vector, dtype=np.float32))
    return made


@dataclass(frozen=True)
class Segment:
    """The live items of one modality: ids (int64 (m,), ascending) and their vectors (float32 (m, d)),
    and for images in a fused bundle their caption vectors (zero rows where `captioned` is false)."""

    ids: np.ndarray
    vectors: np.ndarray
    caption_vectors: np.ndarray | None = None
    captioned: np.ndarray | None = None

    def fused_rows(self) -> np.ndarray:
        """These items as fused rows (clipsearch.index.fusion.fused_rows), (m, 2d)."""
        if not len(self.ids):
            return np.zeros((0, 2 * self.vectors.shape[1]), np.float32)
        captioned = self.captioned if self.captioned is not None else np.zeros(len(self.ids), bool)
        captions = self.caption_vectors if self.caption_vectors is not None else np.zeros_like(self.vectors)
        return fused_rows(self.vectors, captions, captioned)

    def caption_vector(self, item_id: int) -> np.ndarray | None:
        row = int(np.searchsorted(self.ids, item_id))
        if row < len(self.ids) and self.ids[row] == item_id and self.captioned is not None and self.captioned[row]:
            assert self.caption_vectors is not None
            vector: np.ndarray = self.caption_vectors[row]
            return vector
        return None

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
        return sum(len(segment.ids) for segment in self.segments.values()) + \
            sum(len(ids) for ids in self.removed.values())

    def segment(self, modality: Modality) -> Segment:
        return self.segments.get(modality) or Segment(np.zeros(0, np.int64), np.zeros((0, 0), np.float32))

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
            memory = sqlite3.connect(":memory:", check_same_thread=False)
            memory.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, modality TEXT NOT NULL, uri TEXT NOT NULL, "
                           "text TEXT, extra TEXT NOT NULL, content_hash TEXT NOT NULL)")
            memory.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", (
                (item.id, item.modality.value, item.uri, item.text, json.dumps(item.extra, ensure_ascii=False),
                 item.content_hash) for item in self.items.values()))
            self._databases["items"] = memory
        return self._databases["items"]

    def is_removed(self, item_id: int) -> bool:
        return any(_contains(ids, item_id) for ids in self.removed.values())


def count_live_changes(bundle: Path, folded: bool = False) -> int:
    """How many live items and hidden base items the bundle at `bundle` holds (0 without a live
    log); with `folded`, plus the changes compactions folded into its base since it was built."""
    path = bundle / LIVE_FILE
    if not path.is_file():
        return 0
    folded_sql = " + coalesce((SELECT value FROM state WHERE name = 'folded'), 0)" if folded else ""
    try:
        with closing(sqlite3.connect(path, timeout=30)) as connection:
            row = connection.execute("SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM removed)"
                                     + folded_sql).fetchone()
    except sqlite3.Error as error:
        raise BundleError(f"{path}: the live log cannot be read ({error})") from error
    return int(row[0])


@dataclass(frozen=True)
class Carried:
    """What a compaction's new log holds: the writes made while the new base was being built."""

    items: int
    hidden: int
    generation: int
    uris: tuple[str, ...] = ()
    """The uris of the items carried (their files must stay)."""


class LiveLog:
    """The write log of one bundle; safe to share between threads, and between processes through SQLite.

    Every write holds the bundle's lock (clipsearch.store.manifest.bundle_lock), which a rebuild's swap
    also takes, and first checks that its file is still the bundle's: a server whose bundle was
    replaced under it refuses writes (BundleReplaced) rather than write to a retired file.
    """

    def __init__(self, path: Path, base: ItemStore, dim: int) -> None:
        self.path, self.base, self.dim = path, base, dim
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), so two writers queue on
        # SQLite's lock instead of failing half-way through.
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        self._connection.execute(statement)
                if self._state_value("next_id") is None:
                    self._initialise(base)
                columns = {row[1] for row in self._connection.execute("PRAGMA table_info(file_stats)")}
                if "generation" not in columns:  # a log written before compaction existed
                    self._connection.execute("ALTER TABLE file_stats ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
                if "caption_vector" not in {row[1] for row in self._connection.execute("PRAGMA table_info(items)")}:
                    self._connection.execute("ALTER TABLE items ADD COLUMN caption_vector BLOB")  # before fusion
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        self._identity = _identity(path)

    def _initialise(self, base: ItemStore) -> None:
        """Record the base's keys and where new ids start: once, when the log is created. The items
        stream in, in id order, so the last one read holds the largest id."""
        largest = [-1]

        def rows() -> Iterator[tuple[str, str, int]]:
            for item in base:
                largest[0] = item.id
                yield item.modality.value, item.uri, item.id

        self._connection.executemany("INSERT OR IGNORE INTO base_keys (modality, key, id) VALUES (?, ?, ?)", rows())
        self._connection.execute("INSERT INTO state (name, value) VALUES ('next_id', ?), ('generation', 0)",
                                 (largest[0] + 1,))

    def generation(self) -> int:
        with self._lock:
            value = self._state_value("generation")
        return int(value or 0)

    def state(self, since: LiveState | None = None) -> LiveState:
        """A snapshot of every live change, read in one transaction: all of it, or only what was
        written after `since` (an earlier snapshot of this log), laid over it."""
        after = -1 if since is None else since.generation
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                generation = int(self._state_value("generation") or 0)
                removed_rows = self._connection.execute(
                    "SELECT id, modality FROM removed WHERE generation > ? ORDER BY id", (after,)).fetchall()
                item_rows = self._connection.execute(
                    f"SELECT {_ITEM_COLUMNS}, vector, generation, caption_vector FROM items WHERE generation > ?",
                    (after,)).fetchall()
                dropped_rows = self._connection.execute(
                    "SELECT id, generation FROM dropped WHERE generation > ?", (after,)).fetchall()
            finally:
                self._connection.execute("COMMIT")
        removed = {modality: np.union1d(since.removed_of(modality) if since is not None else np.zeros(0, np.int64),
                                        [row[0] for row in removed_rows if row[1] == modality.value]).astype(np.int64)
                   for modality in Modality}
        items = dict(since.items) if since is not None else {}
        vectors: dict[int, np.ndarray] = {} if since is None else {
            int(item_id): segment.vectors[row] for segment in since.segments.values()
            for row, item_id in enumerate(segment.ids)}
        captions: dict[int, np.ndarray] = {} if since is None else {
            int(item_id): vector for segment in since.segments.values() for item_id in segment.ids
            if (vector := segment.caption_vector(int(item_id))) is not None}
        # Replay in the order written: a drop after a write removes the item, a write after a drop restores it.
        events = sorted([(row[7], 1, row) for row in item_rows] + [(row[1], 0, row) for row in dropped_rows],
                        key=lambda event: (event[0], event[1]))
        for _, is_write, row in events:
            if is_write:
                items[row[0]] = Item(row[0], Modality(row[1]), row[2], row[3], json.loads(row[4]), row[5])
                vectors[row[0]] = np.frombuffer(row[6], dtype=np.float32)
                if row[8] is not None:
                    captions[row[0]] = np.frombuffer(row[8], dtype=np.float32)
                else:
                    captions.pop(row[0], None)
            else:
                items.pop(row[0], None)
                vectors.pop(row[0], None)
                captions.pop(row[0], None)
        segments = {}
        for modality in Modality:
            ids = np.array(sorted(item_id for item_id, item in items.items() if item.modality is modality),
                           dtype=np.int64)
            stacked = np.stack([vectors[int(item_id)] for item_id in ids]) if len(ids) else \
                np.zeros((0, self.dim), np.float32)
            captioned = np.array([int(item_id) in captions for item_id in ids], dtype=bool)
            caption_vectors = None  # none captioned (any bundle not fused): no second matrix of zeros
            if captioned.any():
                caption_vectors = np.zeros_like(stacked)
                for row in np.flatnonzero(captioned):
                    caption_vectors[row] = captions[int(ids[row])]
            segments[modality] = Segment(ids, stacked, caption_vectors, captioned)
        return LiveState(generation, removed, segments, items)

    def write(self, items: Sequence[NewItem]) -> list[int]:
        """Add or replace `items` in one transaction; their ids, in order (a replaced item keeps its id)."""
        with self._transaction() as connection:
            return self._write(connection, items)

    def delete(self, item_ids: Iterable[int]) -> list[int]:
        """Delete items by id in one transaction; the ids that existed (and no longer do)."""
        with self._transaction() as connection:
            return self._delete(connection, item_ids)

    def apply(self, writes: Sequence[NewItem], deletes: Iterable[int],
              file_stats: dict[str, tuple[int, int, str]]) -> list[int]:
        """Deletes, then writes, and the source files' stats, in one transaction (a sync's whole result)."""
        with self._transaction() as connection:
            self._delete(connection, deletes)
            ids = self._write(connection, writes)
            generation = self._writing_generation()
            connection.executemany("INSERT OR REPLACE INTO file_stats (uri, size, mtime_ns, content_hash, generation) "
                                   "VALUES (?, ?, ?, ?, ?)", ((uri, *stat, generation)
                                                              for uri, stat in file_stats.items()))
            return ids

    def file_stats(self) -> dict[str, tuple[int, int, str]]:
        """uri → (size, mtime in ns, content hash) of source files as of the last sync."""
        with self._lock:
            rows = self._connection.execute("SELECT uri, size, mtime_ns, content_hash FROM file_stats").fetchall()
        return {row[0]: (int(row[1]), int(row[2]), str(row[3])) for row in rows}

    def _write(self, connection: sqlite3.Connection, items: Sequence[NewItem]) -> list[int]:
        written_at = datetime.now(UTC).isoformat(timespec="seconds")
        generation = self._writing_generation()
        ids = []
        for item in items:
            item_id = self._id_for(connection, item.modality, item.key)
            connection.execute(
                "INSERT OR REPLACE INTO items (id, key, modality, uri, text, extra, content_hash, vector, "
                "written_at, generation, caption_vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, item.key, item.modality.value, item.uri, item.text,
                 json.dumps(item.extra, ensure_ascii=False), item.content_hash,
                 np.ascontiguousarray(item.vector, dtype=np.float32).tobytes(), written_at, generation,
                 None if item.caption_vector is None else
                 np.ascontiguousarray(item.caption_vector, dtype=np.float32).tobytes()))
            ids.append(item_id)
        return ids

    def _writing_generation(self) -> int:
        """The generation the transaction under way commits as (it is raised on commit)."""
        return int(self._state_value("generation") or 0) + 1

    def _delete(self, connection: sqlite3.Connection, item_ids: Iterable[int]) -> list[int]:
        generation = self._writing_generation()
        deleted = []
        for item_id in dict.fromkeys(int(item_id) for item_id in item_ids):
            # A live row that replaced a base item leaves that item hidden when it goes.
            live = connection.execute("DELETE FROM items WHERE id = ? RETURNING id", (item_id,)).fetchone()
            hidden = connection.execute("SELECT 1 FROM removed WHERE id = ?", (item_id,)).fetchone()
            if live is not None:
                connection.execute("INSERT OR REPLACE INTO dropped (id, generation) VALUES (?, ?)",
                                   (item_id, generation))
                deleted.append(item_id)
            elif hidden is None:
                found = self.base.get(item_id)
                if found is not None:
                    connection.execute("INSERT INTO removed (id, modality, generation) VALUES (?, ?, ?)",
                                       (item_id, found.modality.value, generation))
                    deleted.append(item_id)
        return deleted

    def start_fold(self, new_base: dict[Modality, np.ndarray], into: Path) -> None:
        """Begin the log of a bundle whose base holds `new_base` (ids per modality), at `into`: its
        keys and the source files' stats. The costly part of folding, done while writes go on;
        `fold_since` adds what was written since the snapshot folded in.

        Every new base item keeps its key: a base item's from base_keys, a folded item's from its
        row. A folded item already deleted has no row, and its key is free, as it was.

        Keys and stats stream from this log into the new one in id order, a batch at a time: a base
        of millions never has its keys in memory at once.
        """
        wanted = np.sort(np.concatenate([np.zeros(0, np.int64), *new_base.values()]))
        with self._lock, closing(_unsynced(into)) as connection:
            self._connection.execute("BEGIN")
            try:
                connection.execute("BEGIN")
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        connection.execute(statement)
                # A folded item's row holds its key; it comes after the base key of the same id.
                base = self._connection.execute("SELECT id, 0, modality, key FROM base_keys ORDER BY id")
                live = self._connection.execute("SELECT id, 1, modality, key FROM items ORDER BY id")
                rows = heapq.merge(base, live)
                latest = (row for row, following in itertools.pairwise(itertools.chain(rows, [None]))
                          if following is None or following[0] != row[0])
                while batch := list(itertools.islice(latest, KEYS_AT_ONCE)):
                    ids = np.fromiter((row[0] for row in batch), np.int64, len(batch))
                    rows_kept = np.searchsorted(wanted, ids)
                    kept = (rows_kept < len(wanted)) & (wanted[np.minimum(rows_kept, len(wanted) - 1)] == ids) \
                        if len(wanted) else np.zeros(len(ids), bool)
                    connection.executemany("INSERT INTO base_keys (modality, key, id) VALUES (?, ?, ?)",
                                           ((row[2], row[3], row[0]) for row, keep in zip(batch, kept, strict=True)
                                            if keep))
                connection.executemany(
                    "INSERT INTO file_stats (uri, size, mtime_ns, content_hash, generation) VALUES (?, ?, ?, ?, ?)",
                    self._connection.execute("SELECT uri, size, mtime_ns, content_hash, generation FROM file_stats"))
                connection.execute("COMMIT")
            finally:
                self._connection.execute("COMMIT")

    def fold_since(self, after: int, since: LiveState, new_base: dict[Modality, np.ndarray], into: Path) -> Carried:
        """Bring the log that `start_fold` began at `into` up to date with the rows written after
        generation `after` (at first the generation of `since`, the snapshot folded into
        `new_base`; then the one this returned): added or replaced items become its live items, a
        live item deleted since goes, and every new base item replaced or deleted since is hidden.
        The next id, the generation, the count of folded changes and the file stats come along,
        so that ids and keys mean what they meant. Idempotent, so it can catch up while writes go
        on, and once more holding the bundle's lock (when no write can commit) before the swap.
        """
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                if _identity(self.path) != self._identity:
                    raise BundleReplaced(f"the bundle at {self.path.parent} was replaced while it was being compacted")
                changed = np.array(sorted({int(row[0]) for row in self._connection.execute(
                    "SELECT id FROM items WHERE generation > ?1 UNION SELECT id FROM dropped WHERE generation > ?1 "
                    "UNION SELECT id FROM removed WHERE generation > ?1", (after,))}), dtype=np.int64)
                # A row of `items` touched since `after` was written since: a drop deletes the row,
                # and a base item is hidden in the transaction that writes its row.
                written = self._connection.execute(
                    "SELECT id, key, modality, uri, text, extra, content_hash, vector, written_at, caption_vector "
                    "FROM items WHERE generation > ?", (after,)).fetchall()
                file_stats = self._connection.execute(
                    "SELECT uri, size, mtime_ns, content_hash, generation FROM file_stats WHERE generation > ?",
                    (after,)).fetchall()
                generation = int(self._state_value("generation") or 0)
                next_id = int(self._state_value("next_id") or 0)
                folded = int(self._state_value("folded") or 0) + since.changes
            finally:
                self._connection.execute("COMMIT")
        gone = np.setdiff1d(changed, [row[0] for row in written])
        hidden = [(int(item_id), modality.value) for modality, ids in new_base.items()
                  for item_id in _members(changed, ids)]
        with closing(_unsynced(into)) as connection:
            connection.execute("BEGIN")
            connection.executemany("DELETE FROM items WHERE id = ?", ((int(item_id),) for item_id in gone))
            connection.executemany("INSERT OR IGNORE INTO removed (id, modality, generation) VALUES (?, ?, ?)",
                                   ((item_id, modality, generation) for item_id, modality in hidden))
            connection.executemany(
                "INSERT OR REPLACE INTO items (id, key, modality, uri, text, extra, content_hash, vector, written_at, "
                "caption_vector, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((*row, generation) for row in written))
            connection.executemany("INSERT OR REPLACE INTO file_stats (uri, size, mtime_ns, content_hash, generation) "
                                   "VALUES (?, ?, ?, ?, ?)", file_stats)
            connection.executemany("INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)",
                                   (("next_id", next_id), ("generation", generation), ("folded", folded)))
            connection.execute("COMMIT")
            items, removed = connection.execute(
                "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM removed)").fetchone()
            uris = tuple(str(row[0]) for row in connection.execute("SELECT uri FROM items"))
        _fsync(into)
        return Carried(items=int(items), hidden=int(removed), generation=generation, uris=uris)

    def id_of(self, modality: Modality, key: str) -> int | None:
        """The id of the item of `modality` with `key` (live or base), or None if no item ever had it."""
        with self._lock:
            live_id = self._key_in(self._connection, "items", modality, key)
            return live_id if live_id is not None else self._key_in(self._connection, "base_keys", modality, key)

    def key_of(self, item_id: int) -> str | None:
        with self._lock:
            row = self._connection.execute("SELECT key FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                row = self._connection.execute("SELECT key FROM base_keys WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._connection.close()

    @staticmethod
    def _key_in(connection: sqlite3.Connection, table: str, modality: Modality, key: str) -> int | None:
        """The id `table` (items: live; base_keys: base) holds under `key`."""
        row = connection.execute(f"SELECT id FROM {table} WHERE modality = ? AND key = ?",
                                 (modality.value, key)).fetchone()
        return None if row is None else int(row[0])

    def _id_for(self, connection: sqlite3.Connection, modality: Modality, key: str) -> int:
        """The id of the item with this key (live, else base, which becomes hidden), or a new one."""
        live_id = self._key_in(connection, "items", modality, key)
        if live_id is not None:
            return live_id
        base_id = self._key_in(connection, "base_keys", modality, key)
        if base_id is not None:
            connection.execute("INSERT OR IGNORE INTO removed (id, modality, generation) VALUES (?, ?, ?)",
                               (base_id, modality.value, self._writing_generation()))
            return base_id
        new_id = int(self._state_value("next_id") or 0)
        connection.execute("UPDATE state SET value = value + 1 WHERE name = 'next_id'")
        return new_id

    def _state_value(self, name: str) -> int | None:
        row = self._connection.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT with the generation raised, or ROLLBACK on any error."""

    def __init__(self, log: LiveLog) -> None:
        self.log = log

    def __enter__(self) -> sqlite3.Connection:
        self.held = ExitStack()
        try:
            self.held.enter_context(self.log._lock)
            self.held.enter_context(bundle_lock(self.log.path.parent))
            if _identity(self.log.path) != self.log._identity:
                raise BundleReplaced(f"the bundle at {self.log.path.parent} was replaced (rebuilt) after this server "
                                     "loaded it; nothing was written: restart the server to serve the new bundle")
            self.log._connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.held.close()
            raise
        return self.log._connection

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        connection = self.log._connection
        try:
            if error_type is None:
                connection.execute("UPDATE state SET value = value + 1 WHERE name = 'generation'")
                connection.execute("COMMIT")
            else:
                connection.execute("ROLLBACK")
        finally:
            self.held.close()


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` (device and inode), or None if none is."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _contains(ids: np.ndarray, item_id: int) -> bool:
    row = int(np.searchsorted(ids, item_id))
    return row < len(ids) and int(ids[row]) == item_id


def _members(candidates: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The `candidates` that are in `ids` (ascending): a binary search each, not a sort of `ids`."""
    if not len(candidates) or not len(ids):
        return np.zeros(0, np.int64)
    rows = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
    found: np.ndarray = candidates[ids[rows] == candidates]
    return found


def _unsynced(path: Path) -> sqlite3.Connection:
    """A connection to a compaction's new log, which no one reads before it is swapped in: no
    journal and no sync per commit (a crash leaves a file that is thrown away), one fsync at the
    end of each step (_fsync)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=OFF")
    connection.execute("PRAGMA synchronous=OFF")
    return connection


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


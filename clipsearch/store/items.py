"""items.sqlite: one row per item (id, modality, uri, text, extra JSON, content hash), and the
items' keyword tables (clipsearch.store.keywords).

Ids are the same int64 ids the FAISS indices return, so a search result resolves to its item
with one lookup.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.store import filters, keywords
from clipsearch.util.files import atomic_path

ITEMS_FILE = "items.sqlite"

_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    modality TEXT NOT NULL,
    uri TEXT NOT NULL,
    text TEXT,
    extra TEXT NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX items_by_hash ON items (content_hash);
"""
_COLUMNS = "id, modality, uri, text, extra, content_hash"


@dataclass(frozen=True)
class Item:
    """One indexed item. `text` is the caption of an image, or the text itself."""

    id: int
    modality: Modality
    uri: str
    text: str | None
    extra: dict[str, Any]
    content_hash: str


def sort_value(item: Item, key: str) -> str | float | None:
    """The value `key` names in `item` for sorting (an item field, or a path through its metadata,
    'metadata.NAME' always meaning metadata): a number (a boolean as 0 or 1) or a string; None where
    there is none, or it is a list or an object. ItemStore.sort_values reads the same in SQL."""
    value: Any
    if key in ("id", "modality", "uri"):
        value = item.id if key == "id" else item.modality.value if key == "modality" else item.uri
    elif key in ("caption", "text"):
        value = item.text if (key == "caption") == (item.modality is Modality.IMAGE) else None
    else:
        value = item.extra
        for part in key.removeprefix(filters.METADATA_PREFIX).split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool | int | float):
        return float(value)
    return value if isinstance(value, str) else None


def items_in_memory(items: Iterable[Item]) -> sqlite3.Connection:
    """`items` in an in-memory items table with the file's columns, so that a filter's SQL runs on them
    as it runs on the file (the live log's items; one item a write is checked against)."""
    memory = sqlite3.connect(":memory:", check_same_thread=False)
    filters.add_functions(memory)
    memory.executescript(_SCHEMA)
    memory.executemany(f"INSERT INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", (
        (item.id, item.modality.value, item.uri, item.text, json.dumps(item.extra, ensure_ascii=False),
         item.content_hash) for item in items))
    return memory


def passes(item: Item, filter: filters.Filter) -> bool:
    """Whether `item` passes `filter`, by the same SQL a search runs."""
    with closing(items_in_memory([item])) as memory:
        return memory.execute(f"SELECT 1 FROM items WHERE {filter.sql}", filter.params).fetchone() is not None


class ItemStore:
    """Read access to items.sqlite, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        # immutable=1: the file never changes under us, so SQLite skips locking entirely.
        self._uri = f"file:{path}?mode=ro&immutable=1"
        self._connection = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
        filters.add_functions(self._connection)
        self._lock = threading.Lock()
        self._keyword_documents: int | None = None
        """Rows of the keyword tables (None until the first keyword search): the file never changes."""
        # A keyword search may score for a second; it gets a connection of its own in each thread,
        # so that it never holds up the item lookups every search makes, nor another keyword search.
        self._threads = threading.local()
        self._keyword_connections: list[sqlite3.Connection] = []

    def get(self, item_id: int) -> Item | None:
        return self.get_many([item_id]).get(item_id)

    def get_many(self, item_ids: Sequence[int]) -> dict[int, Item]:
        wanted = sorted({int(item_id) for item_id in item_ids})
        if not wanted:
            return {}
        placeholders = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._connection.execute(f"SELECT {_COLUMNS} FROM items WHERE id IN ({placeholders})",
                                            wanted).fetchall()
        return {row[0]: _item_from_row(row) for row in rows}

    def sort_values(self, item_ids: Sequence[int], key: str) -> dict[int, str | float | None]:
        """The value `key` names in each item, for sorting, as sort_value reads it from an Item."""
        expression, params = filters.sort_value_sql(key)
        with self._lock:
            rows = self._connection.execute(
                f"SELECT id, {expression} FROM items WHERE id IN (SELECT value FROM json_each(?))",
                (*params, json.dumps([int(item_id) for item_id in item_ids]))).fetchall()
        return {row[0]: float(row[1]) if isinstance(row[1], int | float) else row[1] for row in rows}

    def matching_ids(self, modality: Modality, condition: str = "1", params: Sequence[Any] = ()) -> np.ndarray:
        """The ids (int64 (n,), ascending) of `modality`'s items where the SQL `condition` holds
        (clipsearch.store.filters compiles one)."""
        with self._lock:
            cursor = self._connection.execute(
                f"SELECT id FROM items WHERE modality = ? AND ({condition}) ORDER BY id", (modality.value, *params))
            return np.fromiter((row[0] for row in cursor), dtype=np.int64)

    def keyword_search(self, query: keywords.KeywordQuery, modality: Modality, condition: str = "1",
                       params: Sequence[Any] = (), limit: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The best `limit` items of `modality` for a keyword query where `condition` holds
        (clipsearch.store.keywords.search); InvalidQuery on `mode` for a bundle built without keyword tables."""
        connection = self._keyword_connection()
        if self._keyword_documents is None:
            if not keywords.has_tables(connection):
                raise InvalidQuery("mode", "this bundle was built before keyword search existed; build it "
                                           "again, or run `python -m indexer compact` on it, to add its keyword index")
            self._keyword_documents = keywords.document_count(connection)
        return keywords.search(connection, query, modality, condition, params, limit, self._keyword_documents)

    def has_keyword_tables(self) -> bool:
        """Whether the file holds the current keyword tables (bundles written before keyword search
        have none, and those written before the bigrams table lack it: a compaction adds them)."""
        connection = self._keyword_connection()
        return keywords.has_tables(connection) and keywords.has_bigrams(connection)

    def _keyword_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._threads, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            filters.add_functions(connection)
            self._threads.connection = connection
            with self._lock:
                self._keyword_connections.append(connection)
        return connection

    def __iter__(self) -> Iterator[Item]:
        """Every item by ascending id, read a batch at a time through a connection of its own (opened
        now), so that a million items never sit in memory at once and lookups are not held up."""
        connection = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
        cursor = connection.execute(f"SELECT {_COLUMNS} FROM items ORDER BY id")

        def items() -> Iterator[Item]:
            try:
                while rows := cursor.fetchmany(ITEMS_AT_ONCE):
                    yield from map(_item_from_row, rows)
            finally:
                connection.close()

        return items()

    def close(self) -> None:
        with self._lock:
            for connection in [self._connection, *self._keyword_connections]:
                connection.close()


ITEMS_AT_ONCE = 10_000
"""Rows read per step when iterating over every item."""


def write_items(path: Path, items: Iterable[Item], keyword_fields: Sequence[str] = ()) -> None:
    """Write a complete items.sqlite at `path`, all or nothing, with every item's caption or text and
    its `keyword_fields` metadata in the keyword tables."""
    with atomic_path(path) as temporary:
        connection = sqlite3.connect(temporary)
        try:
            connection.executescript(_SCHEMA)
            connection.executemany(
                f"INSERT INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                ((item.id, item.modality.value, item.uri, item.text, json.dumps(item.extra, ensure_ascii=False),
                  item.content_hash) for item in items))
            keywords.create_tables(connection)
            keywords.index_items(connection, connection.execute("SELECT id, text, extra FROM items"), keyword_fields)
            connection.commit()
        finally:
            connection.close()


def _item_from_row(row: tuple[Any, ...]) -> Item:
    return Item(id=row[0], modality=Modality(row[1]), uri=row[2], text=row[3], extra=json.loads(row[4]),
                content_hash=row[5])

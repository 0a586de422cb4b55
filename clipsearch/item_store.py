"""items.sqlite: one row per item (id, modality, uri, text, extra JSON, content hash).

Ids are the same int64 ids the FAISS indices return, so a search result resolves to its item
with one lookup.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.files import atomic_path
from clipsearch.modality import Modality

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


class ItemStore:
    """Read access to items.sqlite, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        # immutable=1: the file never changes under us, so SQLite skips locking entirely.
        self._connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

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

    def matching_ids(self, modality: Modality, condition: str = "1", params: Sequence[Any] = ()) -> np.ndarray:
        """The ids (int64 (n,), ascending) of `modality`'s items where the SQL `condition` holds
        (clipsearch.filters compiles one)."""
        with self._lock:
            cursor = self._connection.execute(
                f"SELECT id FROM items WHERE modality = ? AND ({condition}) ORDER BY id", (modality.value, *params))
            return np.fromiter((row[0] for row in cursor), dtype=np.int64)

    def __iter__(self) -> Iterator[Item]:
        with self._lock:
            rows = self._connection.execute(f"SELECT {_COLUMNS} FROM items ORDER BY id").fetchall()
        return (_item_from_row(row) for row in rows)

    def close(self) -> None:
        self._connection.close()


def write_items(path: Path, items: Iterable[Item]) -> None:
    """Write a complete items.sqlite at `path`, all or nothing."""
    with atomic_path(path) as temporary:
        connection = sqlite3.connect(temporary)
        try:
            connection.executescript(_SCHEMA)
            connection.executemany(
                f"INSERT INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                ((item.id, item.modality.value, item.uri, item.text, json.dumps(item.extra, ensure_ascii=False),
                  item.content_hash) for item in items))
            connection.commit()
        finally:
            connection.close()


def _item_from_row(row: tuple[Any, ...]) -> Item:
    return Item(id=row[0], modality=Modality(row[1]), uri=row[2], text=row[3], extra=json.loads(row[4]),
                content_hash=row[5])

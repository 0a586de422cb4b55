"""LiveLog: the write log of one bundle (clipsearch.store.live.schema), its writes and its snapshots.

Every write is one transaction in WAL mode with a full sync, so an acknowledged write survives
kill -9 and power loss; it holds the bundle's lock and raises the generation that readers compare
with their snapshot's. Keys are unique per modality: a write with a key that exists replaces that
item and keeps its id. A base item's key is its uri.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from clipsearch.errors import BundleReplaced
from clipsearch.modality import Modality
from clipsearch.store.items import ItemStore
from clipsearch.store.live.schema import ITEM_COLUMNS, create_tables, identity, migrate
from clipsearch.store.live.state import LiveState, NewItem, replay
from clipsearch.store.manifest import bundle_lock
from clipsearch.util.faults import kill_point


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
                create_tables(self._connection)
                if self.state_value("next_id") is None:
                    self._initialise(base)
                migrate(self._connection)
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        self._identity = identity(path)

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
            value = self.state_value("generation")
        return int(value or 0)

    def state(self, since: LiveState | None = None) -> LiveState:
        """A snapshot of every live change, read in one transaction: all of it, or only what was
        written after `since` (an earlier snapshot of this log), laid over it."""
        after = -1 if since is None else since.generation
        with self.reading() as connection:
            generation = int(self.state_value("generation") or 0)
            removed_rows = connection.execute(
                "SELECT id, modality FROM removed WHERE generation > ? ORDER BY id", (after,)).fetchall()
            item_rows = connection.execute(
                f"SELECT {ITEM_COLUMNS}, vector, generation, caption_vector FROM items WHERE generation > ?",
                (after,)).fetchall()
            dropped_rows = connection.execute(
                "SELECT id, generation FROM dropped WHERE generation > ?", (after,)).fetchall()
        return replay(since, generation, removed_rows, item_rows, dropped_rows, self.dim)

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
        return int(self.state_value("generation") or 0) + 1

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
        new_id = int(self.state_value("next_id") or 0)
        connection.execute("UPDATE state SET value = value + 1 WHERE name = 'next_id'")
        return new_id

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The log's connection inside one read transaction: what it yields is one consistent view."""
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                yield self._connection
            finally:
                self._connection.execute("COMMIT")

    def replaced(self) -> bool:
        """Whether the bundle's file was replaced (compacted or rebuilt) since this log was opened."""
        return identity(self.path) != self._identity

    def state_value(self, name: str) -> int | None:
        """A counter of the `state` table ('generation', 'next_id', 'folded'); hold `reading()`."""
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
            if self.log.replaced():
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
                kill_point("live:committing")
                connection.execute("COMMIT")
                kill_point("live:committed")
            else:
                connection.execute("ROLLBACK")
        finally:
            self.held.close()

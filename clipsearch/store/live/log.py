"""LiveLog: the write log of one bundle (clipsearch.store.live.schema), its writes and its snapshots.

Every write is one transaction in WAL mode with a full sync, so an acknowledged write survives
kill -9 and power loss; it holds the bundle's lock and raises the generation that readers compare
with their snapshot's. Keys are unique per modality: a write with a key that exists replaces that
item and keeps its id. A base item's key is its uri.

A write the filesystem refuses (a full disk, a read-only store, the lock held elsewhere past
`lock_timeout_s`) is rolled back whole and raised as a StorageError (clipsearch.util.storage):
the log stays usable, and the next write goes through once there is room again.
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

from clipsearch.errors import BundleReplaced, StorageError, StorageUnwritable
from clipsearch.index.fusion import TEXT_PARTS
from clipsearch.modality import Modality
from clipsearch.store.items import ItemStore
from clipsearch.store.live.schema import ITEM_COLUMNS, TEXT_VECTOR_COLUMNS, create_tables, identity, migrate
from clipsearch.store.live.state import LiveState, NewItem, replay
from clipsearch.store.manifest import bundle_lock
from clipsearch.util.faults import kill_point
from clipsearch.util.storage import storage_error, storage_errors

LOCK_TIMEOUT_S = 30.0
"""How long a write waits for the bundle's lock and SQLite's before it is refused (StorageLocked)."""
WRITING = "writing to the live log"


class LiveLog:
    """The write log of one bundle; safe to share between threads, and between processes through SQLite.

    Every write holds the bundle's lock (clipsearch.store.manifest.bundle_lock), which a rebuild's swap
    also takes, and first checks that its file is still the bundle's: a server whose bundle was
    replaced under it refuses writes (BundleReplaced) rather than write to a retired file.
    """

    def __init__(self, path: Path, base: ItemStore, dim: int, lock_timeout_s: float = LOCK_TIMEOUT_S,
                 writable: bool = True) -> None:
        self.path, self.base, self.dim, self.lock_timeout_s = path, base, dim, lock_timeout_s
        self.writable = writable
        if not writable:
            self._connection = _read_only_connection(path)
            self._lock = threading.Lock()
            self._identity = identity(path)
            return
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), so two writers queue on
        # SQLite's lock instead of failing half-way through.
        self._lock = threading.Lock()
        self._reconnect = False
        created = not path.exists()
        with storage_errors(path, "opening the live log"):
            self._connect()
            try:
                self._set_up(base)
            except BaseException:
                self._connection.close()
                if created:  # a log that could not be set up is not left behind half-made
                    for leftover in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))):
                        leftover.unlink(missing_ok=True)
                raise
        self._identity = identity(path)

    def _connect(self) -> None:
        """(Re)open the connection: WAL mode and durable commits are set on the file and per connection."""
        if self._reconnect:
            self._connection.close()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                           timeout=self.lock_timeout_s)
        self._connection.execute("PRAGMA synchronous=FULL")
        self._reconnect = False

    def _set_up(self, base: ItemStore) -> None:
        """WAL mode, and the tables, created (with the base's keys) or migrated."""
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            create_tables(self._connection)
            if self.state_value("next_id") is None:
                self._initialise(base)
            migrate(self._connection)
            self._connection.execute("COMMIT")
        except BaseException:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise

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
                f"SELECT {ITEM_COLUMNS}, vector, generation, {', '.join(TEXT_VECTOR_COLUMNS)} FROM items "
                "WHERE generation > ?",
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
                f"written_at, generation, {', '.join(TEXT_VECTOR_COLUMNS)}) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' * len(TEXT_VECTOR_COLUMNS)})",
                (item_id, item.key, item.modality.value, item.uri, item.text,
                 json.dumps(item.extra, ensure_ascii=False), item.content_hash,
                 np.ascontiguousarray(item.vector, dtype=np.float32).tobytes(), written_at, generation,
                 *(None if (vector := item.text_vectors.get(part)) is None else
                   np.ascontiguousarray(vector, dtype=np.float32).tobytes() for part in TEXT_PARTS)))
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

    def id_of_uri(self, uri: str) -> int | None:
        """The id of a live item whose file is at `uri`, if one is."""
        with self._lock:
            row = self._connection.execute("SELECT id FROM items WHERE uri = ? LIMIT 1", (uri,)).fetchone()
        return None if row is None else int(row[0])

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


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """The log opened only to read, on a filesystem that cannot be written. A log whose writer was
    killed still has its WAL and shared-memory files, and SQLite reads them read-only (mode=ro);
    one closed cleanly has neither, and read-only mode would have to create them: its main file
    holds everything, and is read as it is (immutable=1)."""
    if not path.is_file():
        raise sqlite3.OperationalError(f"{path} does not exist")
    errors = []
    for mode in ("mode=ro", "immutable=1"):
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, check_same_thread=False,
                                     isolation_level=None)
        try:
            connection.execute("SELECT value FROM state WHERE name = 'generation'").fetchone()
            return connection
        except sqlite3.Error as error:
            connection.close()
            errors.append(f"{mode}: {error}")
    raise sqlite3.OperationalError(f"{path} cannot be read ({'; '.join(errors)})")


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT with the generation raised, or ROLLBACK on any error; a filesystem's
    refusal is raised as a StorageError."""

    def __init__(self, log: LiveLog) -> None:
        self.log = log

    def __enter__(self) -> sqlite3.Connection:
        if not self.log.writable:
            raise StorageUnwritable(f"{WRITING} at {self.log.path} was refused: it was opened read-only, its "
                                    "filesystem being unwritable; nothing was written", str(self.log.path))
        self.held = ExitStack()
        try:
            self.held.enter_context(self.log._lock)
            self.held.enter_context(bundle_lock(self.log.path.parent, self.log.lock_timeout_s))
            if self.log.replaced():
                raise BundleReplaced(f"the bundle at {self.log.path.parent} was replaced (rebuilt) after this "
                                     "server loaded it; nothing was written: restart the server to serve the new "
                                     "bundle")
            if self.log._reconnect:
                self.log._connect()
            self.log._connection.execute("BEGIN IMMEDIATE")
        except BaseException as error:
            self.held.close()
            refused = self._refusal(error)
            if refused is None:
                raise
            raise refused from error
        return self.log._connection

    def __exit__(self, error_type: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        connection = self.log._connection
        try:
            if error is None:
                try:
                    connection.execute("UPDATE state SET value = value + 1 WHERE name = 'generation'")
                    kill_point("live:committing")
                    connection.execute("COMMIT")
                except BaseException as failed:
                    self._roll_back()
                    refused = self._refusal(failed)
                    if refused is None:
                        raise
                    raise refused from failed
                kill_point("live:committed")
            else:
                self._roll_back()
                refused = self._refusal(error)
                if refused is not None:
                    raise refused from error
        finally:
            self.held.close()

    def _refusal(self, error: BaseException) -> StorageError | None:
        refused = storage_error(error, self.log.path, WRITING)
        if isinstance(refused, StorageUnwritable):
            # SQLite may have opened the file read-only (its filesystem was read-only then), and
            # would stay so after a remount: the next write connects again.
            self.log._reconnect = True
        return refused

    def _roll_back(self) -> None:
        # SQLite has already rolled back a transaction that met a full disk (and a ROLLBACK then
        # fails): only one still open is rolled back here.
        if self.log._connection.in_transaction:
            self.log._connection.execute("ROLLBACK")

"""live.sqlite, the write log of a bundle: its tables, how it is opened and migrated, and counted.

Live changes to a served bundle: items added, replaced and deleted without a rebuild.

The bundle stays the immutable base. Changes go to `live.sqlite` in the bundle directory, SQLite
in WAL mode with a full sync on every commit, so an acknowledged write survives kill -9 and power
loss, and a write is one transaction: it is all there or not at all.

    items       items added or replaced: the same columns as the base's items.sqlite plus their
                `key`, their vector (float32 bytes), when they were written, and in a fused
                bundle the vectors of an image's caption and read text (caption_vector,
                ocr_vector; clipsearch.index.fusion)
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

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from clipsearch.errors import BundleError
from clipsearch.index.fusion import TEXT_PARTS

LIVE_FILE = "live.sqlite"
LIVE_IMAGES = "live-images"
"""Where uploaded image files are kept, beside the log, named by content hash (clipsearch.search.writes)."""

SCHEMA = """
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
    caption_vector BLOB,
    ocr_vector BLOB
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
ITEM_COLUMNS = "id, modality, uri, text, extra, content_hash"
TEXT_VECTOR_COLUMNS = tuple(f"{part}_vector" for part in TEXT_PARTS)
"""The columns of an image's text vectors in a fused bundle, one per fusion text part, in TEXT_PARTS order."""


def create_tables(connection: sqlite3.Connection) -> None:
    """Create whatever tables and indices the log lacks (inside the caller's transaction)."""
    for statement in SCHEMA.strip().split(";"):
        if statement.strip():
            connection.execute(statement)


def migrate(connection: sqlite3.Connection) -> None:
    """Add the columns a log written by an older version lacks."""
    if "generation" not in {row[1] for row in connection.execute("PRAGMA table_info(file_stats)")}:
        # A log written before compaction existed.
        connection.execute("ALTER TABLE file_stats ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
    columns = {row[1] for row in connection.execute("PRAGMA table_info(items)")}
    for column in TEXT_VECTOR_COLUMNS:  # a log from before fusion (caption_vector), or before OCR's
        if column not in columns:
            connection.execute(f"ALTER TABLE items ADD COLUMN {column} BLOB")


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


def live_generation(bundle: Path) -> int:
    """The generation of the bundle's live log (0 without one): it rises with every write."""
    path = bundle / LIVE_FILE
    if not path.is_file():
        return 0
    try:
        with closing(sqlite3.connect(path, timeout=30)) as connection:
            row = connection.execute("SELECT value FROM state WHERE name = 'generation'").fetchone()
    except sqlite3.Error as error:
        raise BundleError(f"{path}: the live log cannot be read ({error})") from error
    return 0 if row is None else int(row[0])


def identity(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` (device and inode), or None if none is."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def unsynced(path: Path) -> sqlite3.Connection:
    """A connection to a compaction's new log, which no one reads before it is swapped in: no
    journal and no sync per commit (a crash leaves a file that is thrown away), one fsync at the
    end of each step (fsync)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=OFF")
    connection.execute("PRAGMA synchronous=OFF")
    return connection


def fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

"""live.sqlite's tables: made on first use, migrated from older versions, counted without opening a log."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import BundleError
from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem, count_live_changes
from clipsearch.store.live.schema import create_tables, identity, migrate
from tests.support.corpora import private_copy


def columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}


def test_a_log_from_before_compaction_and_fusion_gains_their_columns(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "old.sqlite")) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL, modality TEXT NOT NULL, "
                           "uri TEXT NOT NULL, text TEXT, extra TEXT NOT NULL, content_hash TEXT NOT NULL, "
                           "vector BLOB NOT NULL, written_at TEXT NOT NULL, generation INTEGER NOT NULL)")
        connection.execute("CREATE TABLE file_stats (uri TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                           "mtime_ns INTEGER NOT NULL, content_hash TEXT NOT NULL) WITHOUT ROWID")
        create_tables(connection)
        migrate(connection)
        assert {"caption_vector", "ocr_vector"} <= columns(connection, "items")
        assert "generation" in columns(connection, "file_stats")
        migrate(connection)  # a second time changes nothing


def test_live_changes_are_counted_from_the_file(bundle: Bundle, bundle_path: Path, tmp_path: Path) -> None:
    path = private_copy(bundle_path, tmp_path)
    assert count_live_changes(path) == 0  # no log yet
    log = LiveLog(path / LIVE_FILE, bundle.items, bundle.manifest.embedding_dim)
    vector = np.ones(bundle.manifest.embedding_dim, np.float32) / np.sqrt(bundle.manifest.embedding_dim)
    log.write([NewItem("k", Modality.TEXT, "k", "new", {}, "h", vector)])
    log.delete([int(bundle.items.matching_ids(Modality.IMAGE)[0])])
    log.close()
    assert count_live_changes(path) == 2


def test_a_log_that_is_not_sqlite_is_a_bundle_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / LIVE_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(BundleError, match=LIVE_FILE):
        count_live_changes(tmp_path)


def test_a_files_identity_changes_when_it_is_replaced(tmp_path: Path) -> None:
    first = tmp_path / "a"
    first.write_text("a")
    before = identity(first)
    (tmp_path / "b").write_text("b")
    (tmp_path / "b").replace(first)
    assert identity(first) != before and identity(tmp_path / "missing") is None

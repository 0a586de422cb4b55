"""A refused write is named for what it is: the kernel's and SQLite's real errors (a full tmpfs, a
read-only mount, a lock held by another connection) become StorageFull, StorageUnwritable and
StorageLocked with the path and the room left; any other error goes through unchanged."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch.errors import StorageFull, StorageLocked, StorageUnwritable
from clipsearch.util.storage import disk_space, format_bytes, storage_error, storage_errors
from tests.support.small_disk import MiB, SmallDisk


def test_disk_space_reads_the_filesystem_of_a_path_that_does_not_exist_yet(disk: SmallDisk) -> None:
    space = disk_space(disk.path / "not" / "yet")
    assert space is not None
    assert space.mount == disk.path
    assert space.total_bytes == 16 * MiB
    assert space.free_bytes == 16 * MiB  # an empty tmpfs
    assert not space.read_only
    assert space.describe() == f"16.0 MiB free of 16.0 MiB on the filesystem at {disk.path}"


def test_bytes_are_written_in_binary_units() -> None:
    assert [format_bytes(count) for count in (0, 1023, 1024, 5 * MiB + MiB // 2, 3 << 40, 5000 << 40)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.5 MiB", "3.0 TiB", "5000.0 TiB"]


def test_a_file_write_on_a_full_disk_is_storage_full_naming_the_path_and_the_room_left(disk: SmallDisk) -> None:
    disk.fill()
    target = disk.path / "file.bin"
    with pytest.raises(StorageFull) as refused, storage_errors(target, "writing a file"):
        target.write_bytes(os.urandom(MiB))
    assert isinstance(refused.value.__cause__, OSError) and refused.value.__cause__.errno == errno.ENOSPC
    assert refused.value.path == str(target)
    assert refused.value.free_bytes == 0
    assert refused.value.reason == (f"no space left for writing a file at {target}: 0 B free of 16.0 MiB on the "
                                    f"filesystem at {disk.path}; nothing of it was kept; free some space or grow "
                                    "the volume, then retry")


def test_sqlite_on_a_full_disk_is_storage_full_and_its_transaction_is_gone(disk: SmallDisk) -> None:
    connection = sqlite3.connect(disk.path / "log.sqlite", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE rows (payload BLOB)")
    disk.fill(leave_bytes=64 << 10)
    with pytest.raises(StorageFull), storage_errors(disk.path / "log.sqlite", "writing rows"):
        connection.execute("BEGIN IMMEDIATE")
        for _ in range(1000):
            connection.execute("INSERT INTO rows VALUES (?)", (os.urandom(4096),))
        connection.execute("COMMIT")
    assert not connection.in_transaction  # SQLite rolled it back itself
    disk.empty()
    connection.execute("INSERT INTO rows VALUES (x'00')")
    assert connection.execute("SELECT count(*) FROM rows").fetchone() == (1,)


def test_faiss_on_a_full_disk_is_storage_full_read_from_its_message(disk: SmallDisk) -> None:
    index = faiss.IndexFlatIP(64)
    index.add(np.ones((4096, 64), np.float32))
    disk.fill(leave_bytes=64 << 10)
    with pytest.raises(StorageFull), storage_errors(disk.path / "x.faiss", "writing an index"):
        faiss.write_index(index, str(disk.path / "x.faiss"))


def test_a_write_on_a_read_only_mount_is_storage_unwritable_saying_so(disk: SmallDisk) -> None:
    disk.read_only()
    target = disk.path / "file.bin"
    with pytest.raises(StorageUnwritable) as refused, storage_errors(target, "writing a file"):
        target.write_bytes(b"x")
    assert refused.value.reason.startswith(f"writing a file at {target} was refused: the filesystem is read-only; "
                                           "nothing of it was kept; ")


def test_a_database_opened_read_only_is_storage_unwritable(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "log.sqlite").execute("CREATE TABLE rows (x)").connection.commit()
    connection = sqlite3.connect(f"file:{tmp_path / 'log.sqlite'}?mode=ro", uri=True)
    with pytest.raises(StorageUnwritable, match="not permitted"), storage_errors(tmp_path, "writing rows"):
        connection.execute("INSERT INTO rows VALUES (1)")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_a_write_not_permitted_is_storage_unwritable(tmp_path: Path, code: int) -> None:
    # Root may write anywhere (it is what the tests run as), so the kernel's refusal is built here.
    error = storage_error(OSError(code, os.strerror(code), str(tmp_path)), tmp_path, "writing a file")
    assert isinstance(error, StorageUnwritable)
    assert f"writing there is not permitted ({os.strerror(code)})" in error.reason


def test_a_quota_exceeded_is_storage_full(tmp_path: Path) -> None:
    assert isinstance(storage_error(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), tmp_path, "x"), StorageFull)


def test_a_lock_held_by_another_connection_past_the_timeout_is_storage_locked(tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "log.sqlite", isolation_level=None)
    holder.execute("CREATE TABLE rows (x)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(tmp_path / "log.sqlite", isolation_level=None, timeout=0.1)
    with pytest.raises(StorageLocked, match="waited past the lock timeout"), storage_errors(tmp_path, "writing"):
        waiter.execute("BEGIN IMMEDIATE")


@pytest.mark.parametrize("error", [ValueError("a bug"), OSError(errno.ENOENT, "No such file or directory"),
                                   sqlite3.IntegrityError("UNIQUE constraint failed"), RuntimeError("faiss: bad")])
def test_any_other_error_goes_through_unchanged(tmp_path: Path, error: Exception) -> None:
    with pytest.raises(type(error)) as raised, storage_errors(tmp_path, "writing"):
        raise error
    assert raised.value is error

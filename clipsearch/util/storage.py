"""What a failed write to the filesystem means for the user: a full disk, a read-only or unwritable
store, or a lock another process holds, each as a StorageError that names the path and the space left.

The writes of a bundle (its live log, uploaded images, a build's shards and bundle, a compaction)
run inside `storage_errors(path, doing)`, which turns the operating system's and SQLite's codes
into those errors and lets every other error through unchanged. A library that writes from C
(FAISS) reports the operating system's error only in its message; that is recognised too.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clipsearch.errors import StorageError, StorageFull, StorageLocked, StorageUnwritable

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
UNWRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

# SQLite's primary result codes (https://www.sqlite.org/rescode.html); an extended code keeps its
# primary one in the low byte.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 3, 5, 6, 8
SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 10, 13, 14


@dataclass(frozen=True)
class DiskSpace:
    """The filesystem that holds a path: where it is mounted, its room, and whether it is read-only."""

    mount: Path
    free_bytes: int
    """What an unprivileged process may still write (statvfs's f_bavail)."""
    total_bytes: int
    read_only: bool

    def describe(self) -> str:
        mode = ", mounted read-only" if self.read_only else ""
        return f"{format_bytes(self.free_bytes)} free of {format_bytes(self.total_bytes)} on the filesystem " \
               f"at {self.mount}{mode}"


def disk_space(path: Path) -> DiskSpace | None:
    """The filesystem of `path` (of its nearest existing parent, if it does not exist yet); None if
    none can be read."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        stat = os.statvfs(existing)
    except OSError:
        return None
    mount = existing
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return DiskSpace(mount=mount, free_bytes=stat.f_bavail * stat.f_frsize, total_bytes=stat.f_blocks * stat.f_frsize,
                     read_only=bool(stat.f_flag & os.ST_RDONLY))


def format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable: the last unit returns")


NOTHING_KEPT = "nothing of it was kept"


def storage_error(error: BaseException, path: Path, doing: str, outcome: str = NOTHING_KEPT) -> StorageError | None:
    """The StorageError that `error`, met while `doing` at `path`, stands for; None if it is not a
    filesystem's refusal (a bug, or bad data: those stay what they are). `outcome` says what the
    refused work left behind."""
    kind = _kind_of(error, path)
    if kind is None:
        return None
    space = disk_space(path)
    where = space.describe() if space is not None else "the free space could not be read"
    free = space.free_bytes if space is not None else None
    if kind is StorageFull:
        return StorageFull(f"no space left for {doing} at {path}: {where}; {outcome}; free some space or grow the "
                           "volume, then retry", str(path), free)
    if kind is StorageUnwritable:
        why = "the filesystem is read-only" if space is not None and space.read_only \
            else f"writing there is not permitted ({_detail(error)})"
        return StorageUnwritable(f"{doing} at {path} was refused: {why}; {outcome}; {where}", str(path), free)
    return StorageLocked(f"{doing} at {path} waited past the lock timeout for the bundle's write lock, held by "
                         f"another process (a compaction, a sync, a rebuild or another server); {outcome}; "
                         "retry shortly", str(path), free)


@contextmanager
def storage_errors(path: Path, doing: str, outcome: str = NOTHING_KEPT) -> Iterator[None]:
    """Run a write at `path`, raising a StorageError for a filesystem's refusal (`doing` says what
    was being written, and `outcome` what is left of it, for the message) and any other error as it is."""
    try:
        yield
    except (OSError, sqlite3.Error, RuntimeError) as error:
        translated = storage_error(error, path, doing, outcome)
        if translated is None:
            raise
        raise translated from error


def _kind_of(error: BaseException, path: Path) -> type[StorageError] | None:
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        if primary == SQLITE_FULL:
            return StorageFull
        if primary in (SQLITE_READONLY, SQLITE_PERM):
            return StorageUnwritable
        if primary in (SQLITE_BUSY, SQLITE_LOCKED):
            return StorageLocked
        if primary in (SQLITE_IOERR, SQLITE_CANTOPEN):
            # SQLite does not say which system error it met: the filesystem's state does.
            space = disk_space(path)
            if space is not None and space.read_only:
                return StorageUnwritable
            if primary == SQLITE_IOERR and space is not None and space.free_bytes == 0:
                return StorageFull
        return None
    code = error.errno if isinstance(error, OSError) else _errno_in_message(error)
    if code in FULL_ERRNOS:
        return StorageFull
    if code in UNWRITABLE_ERRNOS:
        return StorageUnwritable
    return None


def _errno_in_message(error: BaseException) -> int | None:
    """The system error a C library's exception quotes (FAISS: "write error in …: 1 != 2 (No space
    left on device)"), if it quotes one of those this module answers."""
    if not isinstance(error, RuntimeError):
        return None
    message = str(error)
    return next((code for code in (*FULL_ERRNOS, *UNWRITABLE_ERRNOS) if f"({os.strerror(code)})" in message), None)


def _detail(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)

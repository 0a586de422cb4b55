"""Snapshots of a live bundle: one archive of its base, its live log and its uploaded images, taken
while it is being written to, and restored anywhere, verified.

A snapshot holds the bundle's lock (clipsearch.store.manifest.bundle_lock) only while it takes its
consistent copy: every write and every compaction's swap holds that lock, so the copy sits between
two writes, never inside one. The copy is quick: the base's files and the uploaded images are never
written in place, so they are hard-linked (copied only across filesystems), and the live log is
copied by SQLite (`VACUUM INTO`), as of that moment. Hashing and archiving happen after the lock
is let go. Writes that arrive meanwhile wait for it (or are answered 503 with Retry-After, nothing
written, past their lock timeout).

The archive is a tar file: the bundle's files, and SNAPSHOT.json with the SHA-256 and size of each
and the path the bundle was at. Restoring extracts it beside its destination, checks every file
against SNAPSHOT.json, points the uploaded images' paths at their new place, checks the bundle
loads with its own checksums, and only then renames it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clipsearch.errors import BundleFileMissing, SnapshotInvalid
from clipsearch.store.bundle.load import load_bundle
from clipsearch.store.bundle.swap import link_or_copy
from clipsearch.store.bundle.write import write_items_file
from clipsearch.store.items import ITEMS_FILE, ItemStore
from clipsearch.store.live import LIVE_FILE, LIVE_IMAGES
from clipsearch.store.manifest import bundle_lock, read_manifest
from clipsearch.util.files import atomic_path, atomic_write_text, file_sha256
from clipsearch.util.storage import storage_errors

SNAPSHOT_FILE = "SNAPSHOT.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    files: int
    bytes: int
    locked_s: float
    """How long writes to the bundle were held up."""
    took_s: float


def take_snapshot(bundle: Path, out: Path, lock_timeout_s: float | None = None) -> SnapshotInfo:
    """Write an archive of the bundle at `bundle` (base, live log, uploaded images) to `out`.

    The copy is taken under the bundle's lock (waiting up to `lock_timeout_s`, then StorageLocked);
    `out` appears whole or not at all.
    """
    started = time.monotonic()
    bundle = bundle.resolve()
    read_manifest(bundle)  # a bundle, and a finished one
    staging = out.parent / f".{out.name}.snapshot-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with storage_errors(out, "writing the snapshot"):
            staging.mkdir(parents=True)
            with _changes_held(bundle, lock_timeout_s):
                locked = time.monotonic()
                _copy_consistently(bundle, staging)
                locked_s = time.monotonic() - locked
            files, size = _archive(staging, out, bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SnapshotInfo(out, files, size, locked_s, time.monotonic() - started)


def _archive(staging: Path, out: Path, bundle: Path) -> tuple[int, int]:
    """The files in `staging`, with SNAPSHOT.json listing them, as one tar file at `out` (whole or
    not at all); how many files, and their bytes."""
    sizes = {name: (staging / name).stat().st_size for name in _files_of(staging)}
    records = {name: {"sha256": file_sha256(staging / name), "bytes": size} for name, size in sizes.items()}
    atomic_write_text(staging / SNAPSHOT_FILE, json.dumps({
        "format_version": FORMAT_VERSION, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle_path": str(bundle), "files": records}, indent=2) + "\n")
    with atomic_path(out) as temporary, tarfile.open(temporary, "w") as archive:
        for name in sorted([*records, SNAPSHOT_FILE]):
            archive.add(staging / name, arcname=name, recursive=False)
    return len(sizes), sum(sizes.values())


def restore_snapshot(snapshot: Path, bundle: Path) -> Path:
    """Bring the archive `snapshot` back as a bundle at `bundle` (a path that must not exist yet), verified."""
    bundle = bundle.absolute()
    if bundle.exists():
        raise SnapshotInvalid(f"{bundle} exists already: restore to a new path, or move it away first", "bundle")
    if not snapshot.is_file():
        raise BundleFileMissing(f"no snapshot file at {snapshot}")
    staging = bundle.parent / f".{bundle.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with storage_errors(bundle, "restoring the snapshot"):
            staging.mkdir(parents=True)
            record = _extract(snapshot, staging)
            _relocate(staging, str(record["bundle_path"]), str(bundle.resolve()))
        load_bundle(staging).close()  # every base file against the manifest's checksums, and loadable
        os.rename(staging, bundle)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return bundle


@contextmanager
def _changes_held(bundle: Path, timeout_s: float | None) -> Iterator[None]:
    """The bundle's lock; none for a bundle no one can change (a read-only mount, where the lock
    file could not even be made)."""
    if not os.access(bundle, os.W_OK):
        yield
        return
    with bundle_lock(bundle, timeout_s):
        yield


def _copy_consistently(bundle: Path, staging: Path) -> None:
    """Link or copy every file of the bundle but the live log, which SQLite copies as of now."""
    for name in _files_of(bundle):
        if name.startswith(LIVE_FILE) or name.endswith(".tmp"):  # the log and its -wal, -shm; uploads half-written
            continue
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(bundle / name, staging / name)
    if (bundle / LIVE_FILE).is_file():
        with closing(sqlite3.connect(f"file:{bundle / LIVE_FILE}?mode=ro", uri=True)) as log:
            log.execute("VACUUM INTO ?", (str(staging / LIVE_FILE),))


def _files_of(directory: Path) -> list[str]:
    """The regular files under `directory`, as paths relative to it."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def _extract(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract `archive` into `staging` and check it holds exactly the files SNAPSHOT.json lists, each intact."""
    try:
        with tarfile.open(archive) as opened:
            members = opened.getmembers()
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise SnapshotInvalid(f"{archive}: {member.name} is not a regular file", "snapshot")
            opened.extractall(staging, filter="data")  # refuses absolute paths, '..', and links out of it
    except (tarfile.TarError, EOFError) as error:
        raise SnapshotInvalid(f"{archive} is not a snapshot archive ({error})", "snapshot") from None
    try:
        record = json.loads((staging / SNAPSHOT_FILE).read_text())
        files = record["files"]
        if record.get("format_version") != FORMAT_VERSION:
            raise SnapshotInvalid(f"{archive}: snapshot format {record.get('format_version')!r}, this build reads "
                                  f"{FORMAT_VERSION}", "snapshot")
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise SnapshotInvalid(f"{archive}: no readable {SNAPSHOT_FILE} ({error!r})", "snapshot") from None
    (staging / SNAPSHOT_FILE).unlink()
    present = set(_files_of(staging))
    if present != set(files):
        missing, extra = sorted(set(files) - present), sorted(present - set(files))
        raise SnapshotInvalid(f"{archive}: files missing {missing or 'none'}, not listed {extra or 'none'}", "snapshot")
    for name, expected in files.items():
        if file_sha256(staging / name) != expected["sha256"]:
            raise SnapshotInvalid(f"{archive}: {name} does not match its checksum: the archive is damaged", "snapshot")
    return dict(record)


def _relocate(staging: Path, old_root: str, new_root: str) -> None:
    """Point the paths of the bundle's own uploaded images, in the live log and the base's items,
    from where the bundle was to where it is restored (the base's manifest gets the new checksum)."""
    if old_root == new_root:
        return
    old_prefix, new_prefix = os.path.join(old_root, LIVE_IMAGES, ""), os.path.join(new_root, LIVE_IMAGES, "")
    if (staging / LIVE_FILE).is_file():
        with closing(sqlite3.connect(staging / LIVE_FILE)) as log, log:
            log.execute("UPDATE items SET uri = ? || substr(uri, ?) WHERE substr(uri, 1, ?) = ?",
                        (new_prefix, len(old_prefix) + 1, len(old_prefix), old_prefix))
    store = ItemStore(staging / ITEMS_FILE)
    try:
        items = list(store)
    finally:
        store.close()
    if not any(item.uri.startswith(old_prefix) for item in items):
        return
    moved = [replace(item, uri=new_prefix + item.uri[len(old_prefix):]) if item.uri.startswith(old_prefix) else item
             for item in items]
    (staging / ITEMS_FILE).unlink()
    write_items_file(staging, read_manifest(staging), moved)

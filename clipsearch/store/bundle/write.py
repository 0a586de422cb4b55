"""Writing a bundle: a build's, a relabelling's (new item metadata) and a compaction's, each staged
whole, its manifest written last with the checksums of every other file, then swapped in."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clipsearch.config import ModelRef
from clipsearch.errors import BundleError, LiveChangesPending
from clipsearch.index import faiss_index
from clipsearch.modality import Modality
from clipsearch.store.bundle.layout import (
    FUSED_FILE,
    REPORT_FILE,
    FusedContent,
    ModalityContent,
    index_file_name,
    on_disk_file_names,
    text_part_file_name,
)
from clipsearch.store.bundle.swap import link_or_copy, link_tree, new_staging, remove_retired, swap_into_place
from clipsearch.store.items import ITEMS_FILE, Item, ItemStore, write_items
from clipsearch.store.live import LIVE_FILE, LIVE_IMAGES, count_live_changes
from clipsearch.store.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    METRIC,
    FileRecord,
    Manifest,
    ModalityRecord,
    bundle_lock,
    read_manifest,
)
from clipsearch.util.faults import kill_point
from clipsearch.util.files import atomic_write_text, file_sha256


def write_bundle(out: Path, model: ModelRef, embedding_dim: int, content: dict[Modality, ModalityContent],
                 items: Iterable[Item], report: dict[str, Any], versions: dict[str, str],
                 corpus_fingerprint: str | None = None, discard_live_changes: bool = False,
                 keyword_fields: Sequence[str] = (), fused: FusedContent | None = None,
                 ocr: dict[str, Any] | None = None, video: dict[str, Any] | None = None,
                 audio: dict[str, Any] | None = None) -> Manifest:
    """Write a complete bundle at `out`, replacing an earlier bundle there, all or nothing.

    An earlier bundle holding live changes is replaced only with `discard_live_changes`: else
    LiveChangesPending, and nothing changes.
    """
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not a bundle; refusing to overwrite it")
    staging = new_staging(out)
    try:
        modalities = _write_indices(staging, content)
        _write_fused(staging, fused)
        write_items(staging / ITEMS_FILE, items, keyword_fields)
        atomic_write_text(staging / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False))
        manifest = Manifest(format_version=FORMAT_VERSION, model=model, embedding_dim=embedding_dim,
                            metric=METRIC, modalities=modalities, files=_file_records(staging),
                            skipped=len(report.get("skipped", [])),
                            created_at=datetime.now(UTC).isoformat(timespec="seconds"), versions=versions,
                            corpus_fingerprint=corpus_fingerprint, keyword_fields=list(keyword_fields),
                            fusion=None if fused is None else fused.fusion.as_dict(),
                            fused_index=None if fused is None or fused.index is None else fused.index.spec,
                            ocr=ocr, video=video, audio=audio)
        atomic_write_text(staging / MANIFEST_FILE, manifest.to_json())
        with bundle_lock(out):  # not while `indexer classify` rewrites the bundle, nor a server writes to it
            if not discard_live_changes:
                _refuse_live_changes(out, "a rebuild would drop them; pass --discard-live-changes to rebuild anyway",
                                     folded=True)
            old = swap_into_place(staging, out)
        remove_retired(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def rewrite_items(path: Path, change: Callable[[Item], Item]) -> Manifest:
    """Replace every item of the bundle at `path` by `change(item)`, all or nothing.

    The other files are hard-linked (or copied) into a staging directory beside the bundle, a new
    items.sqlite and manifest are written there, and the whole is swapped into place as a build's
    is: a crash at any point leaves either the old bundle or the new one. Ids and vectors never change.
    """
    manifest = read_manifest(path)
    with bundle_lock(path):
        _refuse_live_changes(path, "relabelling works on the base: run `python -m indexer compact` first")
        manifest = read_manifest(path)  # as it is now that no one else changes it
        store = ItemStore(path / ITEMS_FILE)
        try:
            items = [change(item) for item in store]
        finally:
            store.close()
        staging = new_staging(path)
        try:
            for name in manifest.files:
                if name != ITEMS_FILE:
                    link_or_copy(path / name, staging / name)
            updated = write_items_file(staging, manifest, items)
            _carry_live_files(path, staging)
            old = swap_into_place(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    remove_retired(old)
    return updated


def write_items_file(directory: Path, manifest: Manifest, items: Iterable[Item]) -> Manifest:
    """Write `items` as the items.sqlite of the bundle being made in `directory`, then its manifest
    (`manifest` with that file's new checksum), last; the manifest written."""
    write_items(directory / ITEMS_FILE, items, manifest.keyword_fields)
    record = FileRecord(sha256=file_sha256(directory / ITEMS_FILE), bytes=(directory / ITEMS_FILE).stat().st_size)
    updated = replace(manifest, files={**manifest.files, ITEMS_FILE: record})
    atomic_write_text(directory / MANIFEST_FILE, updated.to_json())
    return updated


def write_compacted(path: Path, manifest: Manifest, content: dict[Modality, ModalityContent], items: Iterable[Item],
                    record: dict[str, Any], start_log: Callable[[Path], object],
                    carry_over: Callable[[Path], Iterable[str]],
                    fused: FusedContent | None = None, model: tuple[ModelRef, int] | None = None,
                    keep_old_at: Path | None = None) -> tuple[Manifest, float]:
    """Replace the bundle at `path` by one with the same model and report, the indices and items
    given (and the caption and fused indices of a fused bundle), and `record` appended to its
    compactions, all or nothing. `items` (ascending ids) is read once, as it is written. Returns
    the new manifest, and how long writes were held (the bundle's lock). A reindex gives its
    `model` (and its vectors' dimension), whose bundle keeps no evaluation of the old one, and
    keeps the old bundle at `keep_old_at` (replacing one kept there before) instead of deleting it.

    The new bundle is written in a staging directory first, and `start_log(staging)` puts its
    live log there. Then, holding the bundle's lock, so that no write commits meanwhile,
    `carry_over(staging)` adds to the log the writes made since the new base was read and names
    those items' uris; the uploaded image files that any item refers to are linked in (the files
    of deleted items are left behind), and the new bundle is swapped into place.
    """
    staging = new_staging(path)
    uploads = path.resolve() / LIVE_IMAGES
    used: set[str] = set()

    def noting_uploads(items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            used.update(_uploaded_names(uploads, (item.uri,)))
            yield item

    try:
        modalities = _write_indices(staging, content)
        _write_fused(staging, fused)
        write_items(staging / ITEMS_FILE, noting_uploads(items), manifest.keyword_fields)
        link_or_copy(path / REPORT_FILE, staging / REPORT_FILE)
        updated = replace(manifest, modalities=modalities, files=_file_records(staging),
                          compactions=[*manifest.compactions, record],
                          fused_index=None if fused is None or fused.index is None else fused.index.spec)
        if model is not None:
            updated = replace(updated, model=model[0], embedding_dim=model[1], evaluations=[])
        atomic_write_text(staging / MANIFEST_FILE, updated.to_json())
        start_log(staging)
        kill_point("compaction:staged")
        with bundle_lock(path):  # writers wait from here to the swap
            locked_at = time.perf_counter()
            used |= _uploaded_names(uploads, carry_over(staging))
            link_tree(path / LIVE_IMAGES, staging / LIVE_IMAGES, used)
            kill_point("compaction:carried")
            old = swap_into_place(staging, path)
            kill_point("compaction:swapped")
            held_s = time.perf_counter() - locked_at
        if keep_old_at is not None and old is not None:
            shutil.rmtree(keep_old_at, ignore_errors=True)
            os.replace(old, keep_old_at)
        else:
            remove_retired(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return updated, held_s


def _write_indices(staging: Path, content: dict[Modality, ModalityContent]) -> dict[Modality, ModalityRecord]:
    modalities = {}
    for modality, modality_content in content.items():
        name = index_file_name(modality)
        if modality_content.on_disk is not None:
            files = modality_content.on_disk
            for built, bundled in zip((files.ivfdata, files.vectors, files.ids), on_disk_file_names(modality),
                                      strict=True):
                if built.name != bundled:
                    raise BundleError(f"{built}: an on-disk index of {modality.value}s must be built as {bundled}")
                built.replace(staging / bundled)
        faiss_index.save_index(modality_content.index, staging / name)
        modalities[modality] = ModalityRecord(count=int(modality_content.index.ntotal), index_file=name,
                                              index=modality_content.spec)
    return modalities


def _write_fused(staging: Path, fused: FusedContent | None) -> None:
    if fused is not None:
        for part, vectors in fused.texts.items():
            faiss_index.save_index(vectors, staging / text_part_file_name(part))
        if fused.index is not None:
            faiss_index.save_index(fused.index.index, staging / FUSED_FILE)


def _file_records(staging: Path) -> dict[str, FileRecord]:
    """The size and sha256 of every file in `staging`: the manifest's table of contents."""
    return {child.name: FileRecord(sha256=file_sha256(child), bytes=child.stat().st_size)
            for child in sorted(staging.iterdir())}


def _uploaded_names(uploads: Path, uris: Iterable[str]) -> set[str]:
    """The names of the files in `uploads` that `uris` point at."""
    prefix = f"{uploads}{os.sep}"
    return {uri[len(prefix):] for uri in uris if uri.startswith(prefix)}


def _carry_live_files(path: Path, staging: Path) -> None:
    """Copy the live log (consistently, through SQLite) and link the uploaded images into `staging`."""
    if (path / LIVE_FILE).is_file():
        with closing(sqlite3.connect(path / LIVE_FILE, timeout=30)) as source, \
                closing(sqlite3.connect(staging / LIVE_FILE)) as target:
            source.backup(target)
    link_tree(path / LIVE_IMAGES, staging / LIVE_IMAGES)


def _refuse_live_changes(path: Path, why: str, folded: bool = False) -> None:
    changes = count_live_changes(path, folded)
    if changes:
        which = "made since it was built, compacted or not" if folded else "not yet compacted"
        raise LiveChangesPending(f"{path} holds {changes} live changes ({LIVE_FILE}) {which}; {why}")

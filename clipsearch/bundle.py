"""The bundle format, defined here and nowhere else.

A bundle is one directory holding everything a server needs:

    manifest.json   format version, model, dimension, metric, per-modality counts and index
                    descriptions, package versions, creation time, sha256 of every other file
                    (clipsearch.manifest)
    image.faiss     one FAISS index per modality present (IndexIDMap2, inner product)
    text.faiss
    items.sqlite    one row per item: id, modality, uri, text (caption or text), extra JSON,
                    content hash; ids are the same int64 ids the indices return (clipsearch.item_store)
    report.json     what the build skipped and why
    live.sqlite     changes made since the build (items added, replaced, deleted), if the bundle
    live-images/    was served with writes, and the files of images added (clipsearch.live); not
                    in the manifest, which describes the base as built

A bundle is written in a staging directory beside its final path and renamed into place only
once complete, and the manifest (written last) holds checksums of all other files, so nothing
half-written ever loads. Changes to a bundle in place (new item metadata, evaluation records) hold
an exclusive lock on `.NAME.lock` beside it (clipsearch.manifest.bundle_lock).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss

from clipsearch import index as faiss_index
from clipsearch.errors import BundleError, BundleFileMissing, ChecksumMismatch, LiveChangesPending, ManifestInvalid
from clipsearch.files import atomic_write_text, file_sha256, fsync_directory
from clipsearch.index import IndexSpec
from clipsearch.item_store import ITEMS_FILE, Item, ItemStore, write_items
from clipsearch.live import LIVE_FILE, count_live_changes
from clipsearch.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    METRIC,
    FileRecord,
    Manifest,
    ModalityRecord,
    ModelRef,
    bundle_lock,
    read_manifest,
)
from clipsearch.modality import Modality

REPORT_FILE = "report.json"


def index_file_name(modality: Modality) -> str:
    return f"{modality.value}.faiss"


@dataclass(frozen=True)
class ModalityContent:
    """What the builder hands over for one modality."""

    index: faiss.Index
    spec: IndexSpec


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    indices: dict[Modality, faiss.Index]
    items: ItemStore

    def close(self) -> None:
        self.items.close()


def load_bundle(path: Path, verify_checksums: bool = True) -> Bundle:
    """Open a bundle for serving after checking it is complete and unaltered.

    Raises BundleFileMissing, ChecksumMismatch, UnsupportedFormatVersion or ManifestInvalid, each
    naming the file and the problem.
    """
    manifest = read_manifest(path)
    for name, file_record in manifest.files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleFileMissing(f"{name}: listed in {MANIFEST_FILE} but missing from the bundle at {path}")
        if file_path.stat().st_size != file_record.bytes:
            raise ChecksumMismatch(f"{name}: size is {file_path.stat().st_size} bytes, the manifest "
                                   f"recorded {file_record.bytes}; the file was altered or truncated")
        if verify_checksums and file_sha256(file_path) != file_record.sha256:
            raise ChecksumMismatch(f"{name}: sha256 does not match the manifest; the file was altered")
    for required in (ITEMS_FILE, *(record.index_file for record in manifest.modalities.values())):
        if required not in manifest.files:
            raise ManifestInvalid(f"{MANIFEST_FILE}: {required} is not listed among the bundle's files")
    indices = {}
    for modality, record in manifest.modalities.items():
        index = faiss_index.load_index(path / record.index_file)
        if index.d != manifest.embedding_dim:
            raise BundleError(f"{record.index_file}: vectors have dimension {index.d}, "
                              f"the manifest says {manifest.embedding_dim}")
        faiss_index.apply_params(index, record.index.params)
        indices[modality] = index
    return Bundle(path=path, manifest=manifest, indices=indices, items=ItemStore(path / ITEMS_FILE))


def write_bundle(out: Path, model: ModelRef, embedding_dim: int, content: dict[Modality, ModalityContent],
                 items: Iterable[Item], report: dict[str, Any], versions: dict[str, str],
                 corpus_fingerprint: str | None = None, discard_live_changes: bool = False) -> Manifest:
    """Write a complete bundle at `out`, replacing an earlier bundle there, all or nothing.

    An earlier bundle holding live changes is replaced only with `discard_live_changes`: else
    LiveChangesPending, and nothing changes.
    """
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not a bundle; refusing to overwrite it")
    _remove_debris_of_dead_builds(out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        modalities = {}
        for modality, modality_content in content.items():
            name = index_file_name(modality)
            faiss_index.save_index(modality_content.index, staging / name)
            modalities[modality] = ModalityRecord(count=int(modality_content.index.ntotal), index_file=name,
                                                  index=modality_content.spec)
        write_items(staging / ITEMS_FILE, items)
        atomic_write_text(staging / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False))
        files = {child.name: FileRecord(sha256=file_sha256(child), bytes=child.stat().st_size)
                 for child in sorted(staging.iterdir())}
        manifest = Manifest(format_version=FORMAT_VERSION, model=model, embedding_dim=embedding_dim,
                            metric=METRIC, modalities=modalities, files=files,
                            skipped=len(report.get("skipped", [])),
                            created_at=datetime.now(UTC).isoformat(timespec="seconds"), versions=versions,
                            corpus_fingerprint=corpus_fingerprint)
        atomic_write_text(staging / MANIFEST_FILE, manifest.to_json())
        with bundle_lock(out):  # not while `indexer classify` rewrites the bundle, nor a server writes to it
            if not discard_live_changes:
                _refuse_live_changes(out, "a rebuild would drop them; pass --discard-live-changes to rebuild anyway")
            _swap_into_place(staging, out)
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
        _refuse_live_changes(path, "relabelling works on the base as built, and would drop them")
        manifest = read_manifest(path)  # as it is now that no one else changes it
        store = ItemStore(path / ITEMS_FILE)
        try:
            items = [change(item) for item in store]
        finally:
            store.close()
        staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for name in manifest.files:
                if name != ITEMS_FILE:
                    _link_or_copy(path / name, staging / name)
            write_items(staging / ITEMS_FILE, items)
            record = FileRecord(sha256=file_sha256(staging / ITEMS_FILE), bytes=(staging / ITEMS_FILE).stat().st_size)
            updated = replace(manifest, files={**manifest.files, ITEMS_FILE: record})
            atomic_write_text(staging / MANIFEST_FILE, updated.to_json())
            _swap_into_place(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return updated


def _refuse_live_changes(path: Path, why: str) -> None:
    changes = count_live_changes(path)
    if changes:
        raise LiveChangesPending(f"{path} holds {changes} live changes ({LIVE_FILE}) made since it was built; {why}")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the bundle's files are never written in place, so sharing them is safe
    except OSError:
        shutil.copy2(source, target)


def _remove_debris_of_dead_builds(out: Path) -> None:
    """Delete staging and retired folders left by builds that were killed (their process is gone)."""
    for debris in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = debris.name.rpartition("-")
        if not kind.endswith((".staging", ".retired")) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(debris, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to `out`; an old bundle there is removed after."""
    if not out.exists():
        os.replace(staging, out)
    else:
        retired = out.with_name(f".{out.name}.retired-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    fsync_directory(out.parent)

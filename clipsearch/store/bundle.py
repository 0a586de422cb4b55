"""The bundle format, defined here and nowhere else.

A bundle is one directory holding everything a server needs:

    manifest.json   format version, model, dimension, metric, per-modality counts and index
                    descriptions, package versions, creation time, sha256 of every other file
                    (clipsearch.store.manifest)
    image.faiss     one FAISS index per modality present (IndexIDMap2, inner product)
    text.faiss
    image.ivfdata   for an on-disk IVF-PQ index only (clipsearch.index.ondisk): image.faiss is then a bare
    image.vectors.npy  IndexIVFPQ whose inverted lists (codes and item ids) are in image.ivfdata;
    image.ids.npy   every vector at half precision by ascending item id, and those ids, for the
                    exact re-rank of its candidates (and likewise for text)
    caption.faiss   with `--fuse` only: the caption vectors of captioned image items, by the
                    image item's id (IndexIDMap2 over a Flat index; clipsearch.index.fusion)
    fused.faiss     with `--fuse` and an approximate image index only: the same kind of index over
                    every image item's fused row [image | caption], 2d wide, by item id
    items.sqlite    one row per item: id, modality, uri, text (caption or text), extra JSON,
                    content hash; ids are the same int64 ids the indices return (clipsearch.store.items);
                    and the FTS5 keyword tables over captions, texts and the manifest's
                    `keyword_fields` (clipsearch.store.keywords)
    report.json     what the build skipped and why
    live.sqlite     changes made since the build or the last compaction (items added, replaced,
    live-images/    deleted), if the bundle was served with writes, and the files of images added
                    (clipsearch.store.live); not in the manifest, which describes the base. A compaction
                    (clipsearch.store.compaction) folds the changes into a new base, in a new bundle
                    written and swapped in as a build's is

A bundle is written in a staging directory beside its final path and renamed into place only
once complete (exchanged with the old one in one step where the system allows it), and the
manifest (written last) holds checksums of all other files, so nothing half-written ever loads.
Changes to a bundle in place (new item metadata, evaluation records) hold an exclusive lock on
`.NAME.lock` beside it (clipsearch.store.manifest.bundle_lock).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipsearch.config import ModelRef
from clipsearch.errors import BundleError, BundleFileMissing, ChecksumMismatch, LiveChangesPending, ManifestInvalid
from clipsearch.index import faiss_index, ondisk
from clipsearch.index.fusion import Fusion
from clipsearch.index.spec import IndexSpec
from clipsearch.modality import Modality
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
from clipsearch.util.files import atomic_write_text, file_sha256, fsync_directory

REPORT_FILE = "report.json"
CAPTIONS_FILE = "caption.faiss"
FUSED_FILE = "fused.faiss"


def index_file_name(modality: Modality) -> str:
    return f"{modality.value}.faiss"


def on_disk_name(modality: Modality) -> str:
    """What an on-disk index's files are named after (`ondisk.build_on_disk`'s `name`): the
    index finds its lists by this name beside it, so it is fixed at build time."""
    return modality.value


def on_disk_file_names(modality: Modality) -> tuple[str, str, str]:
    """The inverted lists, fp16 vectors and ids files of an on-disk index."""
    name = on_disk_name(modality)
    return f"{name}.ivfdata", f"{name}.vectors.npy", f"{name}.ids.npy"


@dataclass(frozen=True)
class ModalityContent:
    """What the builder hands over for one modality."""

    index: faiss.Index
    spec: IndexSpec
    on_disk: ondisk.OnDiskFiles | None = None
    """For an on-disk index: its files, in the build's work directory, moved into the bundle."""


@dataclass(frozen=True)
class FusedContent:
    """What a fused build hands over besides its indices: default weights and the caption vectors."""

    fusion: Fusion
    captions: faiss.Index
    """IndexIDMap2 over a Flat index: captioned image items' caption vectors, by item id."""
    index: ModalityContent | None = None
    """For an approximate image index: the same kind of index over the images' fused rows."""


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    indices: dict[Modality, faiss.Index]
    items: ItemStore
    captions: faiss.Index | None = None
    """The caption vectors of a fused bundle (clipsearch.index.fusion), by image item id."""
    fused_index: faiss.Index | None = None
    """A fused bundle's approximate index over its images' fused rows (None: searched exactly)."""
    stores: dict[Modality, ondisk.VectorStore] = field(default_factory=dict)
    """The fp16 vectors of the modalities whose index is on disk (clipsearch.index.ondisk)."""

    def base_ids(self, modality: Modality) -> np.ndarray:
        """The ids (int64, ascending) of the base items of `modality`."""
        store = self.stores.get(modality)
        return np.asarray(store.ids) if store is not None else faiss_index.ids_of(self.indices[modality])

    def base_vectors(self, modality: Modality, ids: np.ndarray) -> np.ndarray:
        """The stored vectors (float32 (m, d)) of base items `ids`, all of `modality` (an on-disk
        index's from its fp16 store: its PQ codes are too coarse to stand for them)."""
        store = self.stores.get(modality)
        return store.vectors_of(ids) if store is not None else \
            faiss_index.reconstruct_many(self.indices[modality], ids)

    def base_vector(self, modality: Modality, item_id: int) -> np.ndarray | None:
        store = self.stores.get(modality)
        return store.vector(item_id) if store is not None else \
            faiss_index.reconstruct(self.indices[modality], item_id)

    @property
    def fusion(self) -> Fusion | None:
        """The bundle's default fusion weights; None when it stores no caption vectors."""
        weights = self.manifest.fusion
        return None if weights is None or self.captions is None else Fusion.of(weights)

    def close(self) -> None:
        self.items.close()
        for store in self.stores.values():
            store.close()


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
    stores = {}
    for modality, record in manifest.modalities.items():
        if record.index.params.get("on_disk"):
            index = ondisk.load(path / record.index_file)
            _, vectors_name, ids_name = on_disk_file_names(modality)
            stores[modality] = ondisk.VectorStore(path / vectors_name, path / ids_name)
        else:
            index = faiss_index.load_index(path / record.index_file)
        if index.d != manifest.embedding_dim:
            raise BundleError(f"{record.index_file}: vectors have dimension {index.d}, "
                              f"the manifest says {manifest.embedding_dim}")
        faiss_index.apply_params(index, record.index.params)
        indices[modality] = index
    captions = None
    if manifest.fusion is not None:
        if CAPTIONS_FILE not in manifest.files:
            raise ManifestInvalid(f"{MANIFEST_FILE}: the bundle is fused but {CAPTIONS_FILE} is not among its files")
        captions = faiss_index.load_index(path / CAPTIONS_FILE)
    fused_index = None
    if manifest.fused_index is not None:
        fused_index = faiss_index.load_index(path / FUSED_FILE)
        faiss_index.apply_params(fused_index, manifest.fused_index.params)
    return Bundle(path=path, manifest=manifest, indices=indices, items=ItemStore(path / ITEMS_FILE), captions=captions,
                  fused_index=fused_index, stores=stores)


def write_bundle(out: Path, model: ModelRef, embedding_dim: int, content: dict[Modality, ModalityContent],
                 items: Iterable[Item], report: dict[str, Any], versions: dict[str, str],
                 corpus_fingerprint: str | None = None, discard_live_changes: bool = False,
                 keyword_fields: Sequence[str] = (), fused: FusedContent | None = None) -> Manifest:
    """Write a complete bundle at `out`, replacing an earlier bundle there, all or nothing.

    An earlier bundle holding live changes is replaced only with `discard_live_changes`: else
    LiveChangesPending, and nothing changes.
    """
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not a bundle; refusing to overwrite it")
    staging = _new_staging(out)
    try:
        modalities = _write_indices(staging, content)
        _write_captions(staging, fused)
        write_items(staging / ITEMS_FILE, items, keyword_fields)
        atomic_write_text(staging / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False))
        manifest = Manifest(format_version=FORMAT_VERSION, model=model, embedding_dim=embedding_dim,
                            metric=METRIC, modalities=modalities, files=_file_records(staging),
                            skipped=len(report.get("skipped", [])),
                            created_at=datetime.now(UTC).isoformat(timespec="seconds"), versions=versions,
                            corpus_fingerprint=corpus_fingerprint, keyword_fields=list(keyword_fields),
                            fusion=None if fused is None else fused.fusion.as_dict(),
                            fused_index=None if fused is None or fused.index is None else fused.index.spec)
        atomic_write_text(staging / MANIFEST_FILE, manifest.to_json())
        with bundle_lock(out):  # not while `indexer classify` rewrites the bundle, nor a server writes to it
            if not discard_live_changes:
                _refuse_live_changes(out, "a rebuild would drop them; pass --discard-live-changes to rebuild anyway",
                                     folded=True)
            old = _swap_into_place(staging, out)
        _remove(old)
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
        staging = _new_staging(path)
        try:
            for name in manifest.files:
                if name != ITEMS_FILE:
                    _link_or_copy(path / name, staging / name)
            write_items(staging / ITEMS_FILE, items, manifest.keyword_fields)
            record = FileRecord(sha256=file_sha256(staging / ITEMS_FILE), bytes=(staging / ITEMS_FILE).stat().st_size)
            updated = replace(manifest, files={**manifest.files, ITEMS_FILE: record})
            atomic_write_text(staging / MANIFEST_FILE, updated.to_json())
            _carry_live_files(path, staging)
            old = _swap_into_place(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _remove(old)
    return updated


def write_compacted(path: Path, manifest: Manifest, content: dict[Modality, ModalityContent], items: Iterable[Item],
                    record: dict[str, Any], start_log: Callable[[Path], object],
                    carry_over: Callable[[Path], Iterable[str]],
                    fused: FusedContent | None = None) -> tuple[Manifest, float]:
    """Replace the bundle at `path` by one with the same model and report, the indices and items
    given (and the caption and fused indices of a fused bundle), and `record` appended to its
    compactions, all or nothing. `items` (ascending ids) is read once, as it is written. Returns
    the new manifest, and how long writes were held (the bundle's lock).

    The new bundle is written in a staging directory first, and `start_log(staging)` puts its
    live log there. Then, holding the bundle's lock, so that no write commits meanwhile,
    `carry_over(staging)` adds to the log the writes made since the new base was read and names
    those items' uris; the uploaded image files that any item refers to are linked in (the files
    of deleted items are left behind), and the new bundle is swapped into place.
    """
    staging = _new_staging(path)
    uploads = path.resolve() / LIVE_IMAGES
    used: set[str] = set()

    def noting_uploads(items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            used.update(_uploaded_names(uploads, (item.uri,)))
            yield item

    try:
        modalities = _write_indices(staging, content)
        _write_captions(staging, fused)
        write_items(staging / ITEMS_FILE, noting_uploads(items), manifest.keyword_fields)
        _link_or_copy(path / REPORT_FILE, staging / REPORT_FILE)
        updated = replace(manifest, modalities=modalities, files=_file_records(staging),
                          compactions=[*manifest.compactions, record],
                          fused_index=None if fused is None or fused.index is None else fused.index.spec)
        atomic_write_text(staging / MANIFEST_FILE, updated.to_json())
        start_log(staging)
        with bundle_lock(path):  # writers wait from here to the swap
            locked_at = time.perf_counter()
            used |= _uploaded_names(uploads, carry_over(staging))
            _link_tree(path / LIVE_IMAGES, staging / LIVE_IMAGES, used)
            old = _swap_into_place(staging, path)
            held_s = time.perf_counter() - locked_at
        _remove(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return updated, held_s


def _new_staging(out: Path) -> Path:
    """An empty directory beside `out` to write a new bundle in, after clearing dead ones' debris."""
    recover_interrupted_swaps(out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


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


def _write_captions(staging: Path, fused: FusedContent | None) -> None:
    if fused is not None:
        faiss_index.save_index(fused.captions, staging / CAPTIONS_FILE)
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
    _link_tree(path / LIVE_IMAGES, staging / LIVE_IMAGES)


def _link_tree(source: Path, target: Path, only: set[str] | None = None) -> None:
    """Link the files of `source` (those named in `only`, if given) into `target`."""
    if source.is_dir():
        target.mkdir(exist_ok=True)
        for child in source.iterdir():
            # A .tmp file is an upload still being written (clipsearch.util.files.atomic_path).
            if child.is_file() and child.suffix != ".tmp" and (only is None or child.name in only):
                _link_or_copy(child, target / child.name)


def _refuse_live_changes(path: Path, why: str, folded: bool = False) -> None:
    changes = count_live_changes(path, folded)
    if changes:
        which = "made since it was built, compacted or not" if folded else "not yet compacted"
        raise LiveChangesPending(f"{path} holds {changes} live changes ({LIVE_FILE}) {which}; {why}")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the bundle's files are never written in place, so sharing them is safe
    except OSError:
        shutil.copy2(source, target)


def recover_interrupted_swaps(out: Path) -> None:
    """Delete staging and retired folders (and compactions' new logs) left beside `out` by builds,
    compactions and relabellings that were killed (their process is gone).

    A retired bundle with none at `out` was killed between the two renames of a swap without
    exchange: it is put back, not deleted.
    """
    for debris in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, pid = debris.name.rpartition("-")
        if not kind.endswith((".staging", ".retired", ".newlog")) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if kind.endswith(".retired") and not out.exists():
                os.replace(debris, out)
            elif debris.is_dir():
                shutil.rmtree(debris, ignore_errors=True)
            else:
                debris.unlink(missing_ok=True)  # a compaction's new log
        except PermissionError:
            pass  # a live process of another user


def _swap_into_place(staging: Path, out: Path) -> Path | None:
    """Put the finished staging directory at `out`. An old bundle there is exchanged with it in one
    step where the system can (so `out` is never missing), else renamed aside first. Returns where
    the old bundle now is, for the caller to remove once it holds no lock (deleting gigabytes takes
    seconds)."""
    old = None
    if not out.exists():
        os.replace(staging, out)
    elif _exchange(staging, out):
        old = staging
    else:
        old = out.with_name(f".{out.name}.retired-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
    fsync_directory(out.parent)
    return old


def _remove(old: Path | None) -> None:
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories atomically (Linux's renameat2 with RENAME_EXCHANGE); False where the
    C library, kernel or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(second))

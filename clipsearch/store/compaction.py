"""Compaction: fold a live collection's changes (clipsearch.store.live) into a new base bundle, with
no embedding done again and every id kept.

Live items are scored exactly beside the base index on every search, and hidden base rows stay in
the base index, masked; both cost time as they grow. A compaction makes the base equal to the
collection as it is:

1. Prepare, while writes go on: read one snapshot of the log; for each modality take the base
   vectors not hidden (read back from the index, which stores them exactly) and the live ones;
   build the new index; gather the items; begin the new log with every new base item's key.
   - Exact (Flat) indices are rebuilt as they were.
   - IVF indices keep their trained quantizer and take the new rows without training, until the
     rows added since they were trained pass `retrain_fraction` of the rows they were trained
     with. Then they are trained again and the build's recall check (and nprobe tuning) is run
     again, with the other modality's vectors as cross-modal queries when there are any; the
     recall reached is recorded in the manifest as a build's is.
   - On-disk IVF-PQ indices (clipsearch.index.ondisk) go the same way, read from their fp16 store a
     block at a time and written on disk again (a new store and new lists) in a work directory
     beside the bundle, never whole in memory. Other indices of compressed vectors cannot give
     their vectors back: CannotCompact.
2. Catch up, then commit: the new log takes what was written after the snapshot, hidden over the
   new base where it replaced or deleted a base item (clipsearch.store.live.fold_since), in
   passes while writes go on, then once more holding the bundle's lock (writers wait only for
   that pass and the swap); the new bundle is swapped in whole (clipsearch.store.bundle.write_compacted).

A kill at any point leaves the old bundle with its log, or the new one with its own: nothing
acknowledged is lost (tests/test_compaction.py kills it). Servers see the new bundle by its
manifest and load it (app.state); until then they serve their snapshot of the old one.
Only one compaction of a bundle runs at a time (clipsearch.store.manifest.compaction_lock).
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipsearch.config import CompactionPolicy
from clipsearch.errors import CannotCompact, IndexSettingsInvalid
from clipsearch.index import faiss_index, ondisk
from clipsearch.index.fusion import fused_rows_by_id
from clipsearch.index.spec import EXACT_FACTORY, RECALL_QUERIES, default_factory
from clipsearch.modality import Modality
from clipsearch.store.bundle import (
    FUSED_FILE,
    Bundle,
    FusedContent,
    ModalityContent,
    load_bundle,
    on_disk_name,
    recover_interrupted_swaps,
    rewrite_items,
    write_compacted,
)
from clipsearch.store.items import ITEMS_FILE, Item, ItemStore
from clipsearch.store.live import LIVE_FILE, Carried, LiveLog, LiveState, fold_since, start_fold
from clipsearch.store.manifest import compaction_lock

log = logging.getLogger(__name__)

CATCH_UP_PASSES = 2
"""Times the new log catches up with the writes made since the snapshot before the bundle's lock
is taken: each pass copies what came during the one before, so the last one, under the lock
(writers waiting), has little left to copy."""


@dataclass
class CompactionSummary:
    folded: int
    """Live items and hidden base items folded into the new base."""
    found: int = 0
    """Live items and hidden base items the log held (all folded, unless not due)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Items per modality in the new base."""
    carried: int = 0
    """Writes made while the new base was being built, kept in the new log."""
    retrained: list[str] = field(default_factory=list)
    recall_at_10: dict[str, float] = field(default_factory=dict)
    """Of the indices trained again."""
    prepare_s: float = 0.0
    commit_s: float = 0.0
    writes_held_s: float = 0.0
    """How long writes waited: from copying what was written meanwhile to the swap."""
    keyword_tables_added: bool = False
    """The base predated keyword search: its items were written again with their keyword tables."""

    def describe(self) -> str:
        if self.keyword_tables_added:
            return "no live changes to fold; the items were written again with their keyword tables"
        if not self.folded:
            return f"not compacted: {self.found} live changes, too few to be due" if self.found else \
                "nothing to compact: the bundle holds no live changes"
        counts = ", ".join(f"{count} {modality}s" for modality, count in self.counts.items()) or "no items"
        retrained = "".join(f"; retrained the {modality} index (recall@10 {self.recall_at_10[modality]:.3f})"
                            if modality in self.recall_at_10 else f"; retrained the {modality} index"
                            for modality in self.retrained)
        return (f"folded {self.folded} changes into a base of {counts}; kept {self.carried} written meanwhile"
                f"{retrained}; {self.prepare_s:.1f} s to prepare, {self.commit_s:.1f} s to write, "
                f"{self.writes_held_s:.2f} s of it holding writes")


@dataclass
class _NewBase:
    ids: np.ndarray
    vectors: np.ndarray | None
    """In memory; None for an on-disk index's, read from `chunks` instead."""
    added: int
    """Live rows folded in (adds and replacements): what an IVF index takes without training."""
    chunks: ondisk.Chunks | None = None
    """A pass over the vectors a block at a time (an on-disk index's store, merged with the live rows)."""

    def recall_queries(self) -> np.ndarray:
        """Up to RECALL_QUERIES of the vectors: the other modality's cross-modal recall queries."""
        if self.vectors is not None:
            return self.vectors[:RECALL_QUERIES]
        assert self.chunks is not None
        parts, held = [], 0
        for _, vectors in self.chunks():
            parts.append(vectors[:RECALL_QUERIES - held])
            held += len(parts[-1])
            if held >= RECALL_QUERIES:
                break
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def all_vectors(self) -> np.ndarray:
        if self.vectors is not None:
            return self.vectors
        assert self.chunks is not None
        return np.concatenate([vectors for _, vectors in self.chunks()])


class Compaction:
    """One compaction of the bundle at a path: `prepare()`, `catch_up()` as often as wanted while
    writes go on, then `commit()` (or `close()` to give up)."""

    def __init__(self, path: Path, policy: CompactionPolicy | None = None, use_gpu: bool = False) -> None:
        self.path, self.policy, self.use_gpu = path, policy or CompactionPolicy(), use_gpu
        recover_interrupted_swaps(path)
        self.bundle: Bundle = load_bundle(path, verify_checksums=False)  # sizes still checked
        dim = self.bundle.manifest.embedding_dim
        self.live = LiveLog(path / LIVE_FILE, self.bundle.items, dim)
        self.state: LiveState = LiveState(generation=-1)
        self.content: dict[Modality, ModalityContent] = {}
        self.fused: FusedContent | None = None
        """A fused bundle's new caption index (and fused index, over an approximate image index)."""
        self.removed: dict[Modality, set[int]] = {}
        """Base ids hidden as of the snapshot (deleted or replaced), per modality."""
        self.new_ids: dict[Modality, np.ndarray] = {}
        self.summary = CompactionSummary(folded=0)
        self.new_log = path.with_name(f".{path.name}.newlog-{os.getpid()}")
        """The new bundle's log, begun beside the bundle and moved into it at the commit."""
        self.work = path.with_name(f".{path.name}.compacting.staging-{os.getpid()}")
        """Where new on-disk indices are written, beside the bundle so that their files move into it
        (clipsearch.store.bundle.recover_interrupted_swaps removes it after a kill)."""
        self._caught_up = -1

    def prepare(self, only_if_due: bool = False) -> CompactionSummary:
        """Read the log's snapshot and build the new base in memory; writes go on meanwhile. With
        `only_if_due`, nothing is done (and nothing folded) unless the policy says it is due."""
        started = time.perf_counter()
        self.state = state = self.live.state()
        changes = state.changes
        base_count = sum(int(index.ntotal) for index in self.bundle.indices.values())
        self.summary.found = changes
        if not changes or (only_if_due and not self.policy.due(changes, base_count)):
            return self.summary
        self.summary.folded = changes
        bases = {modality: self._new_base(modality) for modality in Modality}
        bases = {modality: base for modality, base in bases.items() if len(base.ids)}
        self.new_ids = {modality: base.ids for modality, base in bases.items()}
        for modality, base in bases.items():
            others = [other.recall_queries() for kind, other in bases.items() if kind is not modality]
            self.content[modality] = self._index(modality, base, others[0] if others else None)
            self.summary.counts[modality.value] = len(base.ids)
        if self.bundle.captions is not None:
            self.fused = self._new_fused(bases.get(Modality.IMAGE))
        self.removed = {modality: set(state.removed_of(modality).tolist()) for modality in Modality}
        self.new_log.unlink(missing_ok=True)
        start_fold(self.live, self.new_ids, self.new_log)
        self._caught_up = state.generation
        self.summary.prepare_s = time.perf_counter() - started
        log.info("compaction of %s prepared in %.1f s: %d changes folded", self.path, self.summary.prepare_s,
                 self.summary.folded)
        return self.summary

    def commit(self) -> CompactionSummary:
        """Write the new bundle, carry over the writes made since `prepare`, and swap it in."""
        if not self.summary.folded:
            return self.summary
        started = time.perf_counter()
        carried: list[Carried] = []

        def move_log_in(staging: Path) -> None:
            # Now, with the new bundle written, the last passes before the lock leave it little to copy.
            for _ in range(CATCH_UP_PASSES):
                self.catch_up()
            os.replace(self.new_log, staging / LIVE_FILE)

        def carry_over(staging: Path) -> tuple[str, ...]:
            carried.append(fold_since(self.live, self._caught_up, self.state, self.new_ids, staging / LIVE_FILE))
            return carried[-1].uris

        record: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "generation": self.state.generation,
            "folded": self.summary.folded, "counts": self.summary.counts, "retrained": self.summary.retrained,
            "prepare_s": round(self.summary.prepare_s, 2)}
        _, self.summary.writes_held_s = write_compacted(self.path, self.bundle.manifest, self.content,
                                                        self._new_items(), record, move_log_in, carry_over, self.fused)
        self.summary.carried = carried[-1].items + carried[-1].hidden
        self.summary.commit_s = time.perf_counter() - started
        log.info("compacted %s: %s", self.path, self.summary.describe())
        return self.summary

    def _new_items(self) -> Iterator[Item]:
        """The new base's items as of the snapshot, by ascending id: the base's not hidden (read a
        batch at a time), merged with the live ones (a replaced item keeps its id)."""
        kept = (item for item in self.bundle.items if item.id not in self.removed[item.modality])
        return heapq.merge(kept, sorted(self.state.items.values(), key=lambda item: item.id),
                           key=lambda item: item.id)

    def catch_up(self) -> None:
        """Copy into the new log what was written since the last catch-up (since the snapshot, at
        first). The commit does it CATCH_UP_PASSES times, then once more holding writes."""
        if self.summary.folded:
            self._caught_up = fold_since(self.live, self._caught_up, self.state, self.new_ids, self.new_log).generation

    def close(self) -> None:
        self.new_log.unlink(missing_ok=True)  # given up: nothing of it was used
        shutil.rmtree(self.work, ignore_errors=True)  # what a commit moved into the bundle is gone from it
        self.live.close()
        self.bundle.close()

    def _new_base(self, modality: Modality) -> _NewBase:
        """The ids (ascending) and vectors of `modality`'s items as of the snapshot."""
        if modality in self.bundle.stores:
            return self._new_on_disk_base(modality)
        index = self.bundle.indices.get(modality)
        dim = self.bundle.manifest.embedding_dim
        kept, kept_vectors = np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        if index is not None:
            if not faiss_index.is_lossless(index):
                factory = self.bundle.manifest.modalities[modality].index.factory
                raise CannotCompact(f"the {modality.value} index ({factory}) stores compressed vectors, which "
                                    "cannot be read back exactly; rebuild the bundle to fold its live changes in")
            kept = np.setdiff1d(faiss_index.ids_of(index), self.state.removed_of(modality), assume_unique=True)
            kept_vectors = faiss_index.reconstruct_many(index, kept)
        segment = self.state.segment(modality)
        ids = np.concatenate([kept, segment.ids])
        vectors = np.concatenate([kept_vectors, segment.vectors.reshape(-1, dim)])
        order = np.argsort(ids, kind="stable")
        return _NewBase(ids[order], np.ascontiguousarray(vectors[order]), added=len(segment.ids))

    def _new_on_disk_base(self, modality: Modality) -> _NewBase:
        """An on-disk index's new base: its stored rows not hidden, and the live ones, read a block
        at a time from its fp16 store."""
        store = self.bundle.stores[modality]
        stored_ids = np.asarray(store.ids)
        keep = ~np.isin(stored_ids, self.state.removed_of(modality))
        segment = self.state.segment(modality)
        live_vectors = segment.vectors.reshape(-1, self.bundle.manifest.embedding_dim)
        ids = np.sort(np.concatenate([stored_ids[keep], segment.ids]))
        return _NewBase(ids, None, added=len(segment.ids),
                        chunks=ondisk.chunks_from_store(store, keep, segment.ids, live_vectors))

    def _new_fused(self, images: _NewBase | None) -> FusedContent:
        """A fused bundle's caption vectors as of the snapshot (the base's, less those of hidden
        items, and those of live images with a caption), and its fused index over the new image
        base: refilled with no training as the image index was, else built again."""
        captions = self.bundle.captions
        fusion = self.bundle.fusion
        assert captions is not None and fusion is not None
        kept = np.setdiff1d(faiss_index.ids_of(captions), self.state.removed_of(Modality.IMAGE), assume_unique=True)
        segment = self.state.segment(Modality.IMAGE)
        captioned = segment.captioned if segment.captioned is not None else np.zeros(len(segment.ids), bool)
        live_vectors = segment.caption_vectors if segment.caption_vectors is not None else segment.vectors
        ids = np.concatenate([kept, segment.ids[captioned]])
        vectors = np.concatenate([faiss_index.reconstruct_many(captions, kept),
                                  live_vectors.reshape(-1, captions.d)[captioned]])
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], np.ascontiguousarray(vectors[order])
        new_captions, _ = faiss_index.build_index(vectors, ids, EXACT_FACTORY)
        record = self.bundle.manifest.fused_index
        image_content = self.content.get(Modality.IMAGE)
        if record is None or images is None or image_content is None or image_content.spec.exact:
            return FusedContent(fusion, new_captions)
        rows = fused_rows_by_id(images.ids, images.all_vectors(), ids, vectors)
        if Modality.IMAGE.value in self.summary.retrained:
            index, spec = faiss_index.build_index(rows, images.ids, record.factory, use_gpu=self.use_gpu)
        else:
            trained = faiss_index.load_index(self.path / FUSED_FILE, mmap=False)
            index = faiss_index.refill_index(trained, rows, images.ids)
            faiss_index.apply_params(index, record.params)
            spec = replace(record, params={**record.params, "added_since_training": images.added +
                                           int(record.params.get("added_since_training", 0))})
        return FusedContent(fusion, new_captions, ModalityContent(index, spec))

    def _index(self, modality: Modality, base: _NewBase, others: np.ndarray | None) -> ModalityContent:
        record = self.bundle.manifest.modalities.get(modality)
        queries_label = f"{'text' if modality is Modality.IMAGE else 'image'} (cross-modal)" \
            if others is not None else None
        if record is not None and record.index.params.get("on_disk"):
            try:
                return self._on_disk_index(modality, base, others, queries_label)
            except IndexSettingsInvalid:  # too few items left for its lists: exact search then
                record = None
        elif record is not None and not record.index.exact:
            params = record.index.params
            added = int(params.get("added_since_training", 0)) + base.added
            trained_with = int(params.get("trained_with", record.count))
            if added < self.policy.retrain_fraction * trained_with:
                refilled = faiss_index.refill_index(self._in_memory(modality), base.all_vectors(), base.ids)
                faiss_index.apply_params(refilled, params)
                return ModalityContent(refilled, replace(record.index, params={
                    **params, "added_since_training": added}))
        # A new modality, an exact index, or an IVF index due for training: built as a build would.
        factory = record.index.factory if record is not None else default_factory(len(base.ids))
        vectors = base.all_vectors()
        try:
            index, spec = faiss_index.build_index(vectors, base.ids, factory, others, queries_label,
                                                  use_gpu=self.use_gpu)
        except IndexSettingsInvalid:  # too few items left for its lists: exact search then
            index, spec = faiss_index.build_index(vectors, base.ids, EXACT_FACTORY)
        if not spec.exact:
            self.summary.retrained.append(modality.value)
            if spec.recall_at_10 is not None:
                self.summary.recall_at_10[modality.value] = spec.recall_at_10
        return ModalityContent(index, spec)

    def _on_disk_index(self, modality: Modality, base: _NewBase, others: np.ndarray | None,
                       queries_label: str | None) -> ModalityContent:
        """An on-disk index's new lists and store: refilled with no training (and its search
        settings kept) while the rows added since training stay few, else built again as the
        indexer builds it (trained, tuned, its recall recorded)."""
        assert base.chunks is not None
        record = self.bundle.manifest.modalities[modality]
        params = record.index.params
        added = int(params.get("added_since_training", 0)) + base.added
        trained_with = int(params.get("trained_with", record.count))
        work, name = self.work / modality.value, on_disk_name(modality)
        if added < self.policy.retrain_fraction * trained_with:
            trained = ondisk.emptied(self.path / record.index_file)
            files = ondisk.refill_on_disk(base.chunks, len(base.ids), trained, work, name)
            faiss_index.apply_params(files.index, params)
            return ModalityContent(files.index, replace(record.index, params={**params, "added_since_training": added}),
                                   on_disk=files)
        files, spec = ondisk.build_on_disk(base.chunks, len(base.ids), self.bundle.manifest.embedding_dim,
                                           record.index.factory, work, name, others, queries_label)
        self.summary.retrained.append(modality.value)
        if spec.recall_at_10 is not None:
            self.summary.recall_at_10[modality.value] = spec.recall_at_10
        return ModalityContent(files.index, spec, on_disk=files)

    def _in_memory(self, modality: Modality) -> faiss.Index:
        """The modality's index read whole into memory (a served one may be memory-mapped read-only)."""
        return faiss_index.load_index(self.path / self.bundle.manifest.modalities[modality].index_file,
                                      mmap=False)


def compact(path: Path, policy: CompactionPolicy | None = None, use_gpu: bool = False, wait: bool = True,
            only_if_due: bool = False) -> CompactionSummary | None:
    """Compact the bundle at `path` now (with `only_if_due`, only if `policy` says so: folded is
    then 0 when it is not); None without `wait` if another compaction of it is running."""
    with compaction_lock(path, wait) as held:
        if not held:
            return None
        compaction = Compaction(path, policy, use_gpu)
        try:
            compaction.prepare(only_if_due)
            summary = compaction.commit()
        finally:
            compaction.close()
        if not summary.found and not _has_keyword_tables(path):
            # A base from before keyword search, with nothing to fold: a compaction writes the items,
            # and their keyword tables with them, so this one does only that.
            rewrite_items(path, lambda item: item)
            summary.keyword_tables_added = True
        return summary


def _has_keyword_tables(path: Path) -> bool:
    store = ItemStore(path / ITEMS_FILE)
    try:
        return store.has_keyword_tables()
    finally:
        store.close()

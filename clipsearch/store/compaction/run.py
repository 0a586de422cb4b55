"""Running one compaction: prepare the new base while writes go on, catch its log up, commit the swap."""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.config import CompactionPolicy
from clipsearch.modality import Modality, recall_queries_for
from clipsearch.store import segments
from clipsearch.store.bundle import (
    Bundle,
    FusedContent,
    ModalityContent,
    load_bundle,
    recover_interrupted_swaps,
    rewrite_items,
    write_compacted,
)
from clipsearch.store.compaction.rebuild import Rebuild
from clipsearch.store.items import ITEMS_FILE, Item, ItemStore
from clipsearch.store.live import LIVE_FILE, Carried, LiveLog, LiveState, fold_since, start_fold
from clipsearch.store.manifest import compaction_lock
from clipsearch.util.faults import kill_point
from clipsearch.util.storage import storage_errors

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
        rebuild = Rebuild(self.bundle, state, self.policy, self.use_gpu, self.work)
        bases = {modality: rebuild.new_base(modality) for modality in Modality}
        bases = {modality: base for modality, base in bases.items() if len(base.ids)}
        # The new base's items (a video's segments are one item), by which the new log keeps their keys.
        self.new_ids = {modality: np.unique(segments.items_of(base.ids)) if modality.timed else base.ids
                        for modality, base in bases.items()}
        for modality, base in bases.items():
            queried_by = recall_queries_for(modality, bases)
            self.content[modality] = rebuild.index(modality, base, queried_by,
                                                   None if queried_by is None else bases[queried_by].recall_queries())
            self.summary.counts[modality.value] = len(self.new_ids[modality])
        if self.bundle.fusion is not None:
            self.fused = rebuild.fused(bases.get(Modality.IMAGE), self.content)
        self.summary.retrained, self.summary.recall_at_10 = rebuild.retrained, rebuild.recall_at_10
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


def compact(path: Path, policy: CompactionPolicy | None = None, use_gpu: bool = False, wait: bool = True,
            only_if_due: bool = False) -> CompactionSummary | None:
    """Compact the bundle at `path` now (with `only_if_due`, only if `policy` says so: folded is
    then 0 when it is not); None without `wait` if another compaction of it is running."""
    with compaction_lock(path, wait) as held:
        if not held:
            return None
        with storage_errors(path, "the compaction", "the bundle and its live log are as they were, and the "
                                                    "staging files are removed"):
            compaction = Compaction(path, policy, use_gpu)
            try:
                compaction.prepare(only_if_due)
                kill_point("compaction:prepared")
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

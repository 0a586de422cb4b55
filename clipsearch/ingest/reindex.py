"""Reindexing a collection with another model while it is served, and rolling back.

A reindex reads a snapshot of the collection (its base without hidden items, and its live items),
embeds every item again with the new model (images from their files, uploads included, which the
bundle keeps; texts from their text) and builds the new indices, all while searches and writes go
on against the old bundle. Then, as a compaction does (clipsearch.store.compaction), it begins the
new bundle's live log with the keys of the snapshot, catches up with the writes made meanwhile
(each embedded by the new model too), and once more holding the bundle's lock, so that no write
commits in between, before the new bundle is swapped in in one step. Servers load it and its model
within a poll, serving the old one until then; a write that reaches the old log runs again on the
new bundle.

The old bundle is kept beside the new one (`.NAME.previous`) for `rollback`, which swaps it back
in one step, or `forget_previous`, which deletes it. A rollback would drop the writes made since
the switch (the old bundle never saw them), so it refuses to while there are any.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.config import VideoSampling
from clipsearch.errors import CannotReindex
from clipsearch.index import faiss_index
from clipsearch.index.spec import EXACT_FACTORY, RECALL_QUERIES
from clipsearch.ingest.loading import (
    VideoPayload,
    encode_batch,
    encode_video,
    image_batches,
    text_batches,
    video_batches,
)
from clipsearch.ingest.sources import SourceItem
from clipsearch.modality import Modality, recall_queries_for
from clipsearch.model.encoder import ClipEncoder
from clipsearch.store import segments
from clipsearch.store.bundle import Bundle, ModalityContent, load_bundle, recover_interrupted_swaps, write_compacted
from clipsearch.store.bundle.swap import swap_into_place
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, Carried, LiveLog, LiveState, fold_since, live_generation, start_fold
from clipsearch.store.manifest import MANIFEST_FILE, Manifest, bundle_lock, compaction_lock, read_manifest
from clipsearch.util.progress import progress_bar

log = logging.getLogger(__name__)

CATCH_UP_PASSES = 2
"""Times the new log catches up with the writes made meanwhile before the bundle's lock is taken."""
MAX_REPORTED = 5
"""Items named when some cannot be embedded again."""


def previous_path(path: Path) -> Path:
    """Where a reindex keeps the bundle it replaced (a dot folder: no collection, no build's debris)."""
    return path.with_name(f".{path.name}.previous")


@dataclass
class ReindexSummary:
    model_from: str
    model_to: str
    counts: dict[str, int] = field(default_factory=dict)
    """Items per modality in the new base."""
    carried: int = 0
    """Writes made while the new base was being built, embedded again and kept in the new log."""
    embed_s: float = 0.0
    commit_s: float = 0.0
    writes_held_s: float = 0.0

    @property
    def items_per_s(self) -> float:
        return sum(self.counts.values()) / self.embed_s if self.embed_s else 0.0

    def describe(self) -> str:
        counts = ", ".join(f"{count} {modality}s" for modality, count in self.counts.items()) or "no items"
        return (f"reindexed {counts} from {self.model_from} to {self.model_to} ({self.items_per_s:.1f} items/s); "
                f"kept {self.carried} written meanwhile; {self.embed_s:.1f} s to embed, {self.commit_s:.1f} s to "
                f"write, {self.writes_held_s:.2f} s of it holding writes")


class Reindex:
    """One reindex of the bundle at `path` with `encoder`'s model: `prepare()` (the long part, while
    writes go on), `catch_up()` as often as wanted, then `commit()`, or `close()` to give up."""

    def __init__(self, path: Path, encoder: ClipEncoder, batch_size: int = 64, workers: int = 0,
                 max_pixels: int = 64_000_000, progress: bool = False, use_gpu: bool = False) -> None:
        self.path, self.encoder, self.use_gpu = path, encoder, use_gpu
        self.batch_size, self.workers, self.max_pixels, self.progress = batch_size, workers, max_pixels, progress
        recover_interrupted_swaps(path)
        self.bundle: Bundle = load_bundle(path, verify_checksums=False)  # sizes still checked
        manifest = self.bundle.manifest
        try:
            _check_reindexable(manifest, encoder)
        except CannotReindex:
            self.bundle.close()
            raise
        self.live = LiveLog(path / LIVE_FILE, self.bundle.items, manifest.embedding_dim)
        self.summary = ReindexSummary(model_from=manifest.model.describe(), model_to=encoder.ref.describe())
        self.content: dict[Modality, ModalityContent] = {}
        self.new_ids: dict[Modality, np.ndarray] = {}
        self.items: list[Item] = []
        self.new_log = path.with_name(f".{path.name}.newlog-{os.getpid()}")
        self._state = LiveState(generation=-1)
        """The snapshot `prepare` embeds."""
        self._caught_up = -1

    def prepare(self) -> ReindexSummary:
        """Embed every item of a snapshot with the new model and build the new indices; writes go on."""
        started = time.perf_counter()
        state = self._state = self.live.state()
        hidden = {modality: set(state.removed_of(modality).tolist()) for modality in Modality}
        base = (item for item in self.bundle.items if item.id not in hidden[item.modality])
        self.items = list(heapq.merge(base, sorted(state.items.values(), key=lambda item: item.id),
                                      key=lambda item: item.id))
        vectors: dict[Modality, np.ndarray] = {}
        index_ids: dict[Modality, np.ndarray] = {}
        for modality in Modality:
            items = [item for item in self.items if item.modality is modality]
            if items:
                self.new_ids[modality] = np.array([item.id for item in items], dtype=np.int64)
                embedded = self.embed(items)
                if modality.timed:  # each video's (or sound's) segments are rows of their own
                    vectors[modality] = np.concatenate(embedded)
                    index_ids[modality] = np.concatenate([segments.segment_ids(item.id, len(rows))
                                                          for item, rows in zip(items, embedded, strict=True)])
                else:
                    vectors[modality], index_ids[modality] = np.stack(embedded), self.new_ids[modality]
        for modality, ids in index_ids.items():
            queried_by = recall_queries_for(modality, vectors)  # as a build's
            record = self.bundle.manifest.modalities.get(modality)
            factory = record.index.factory if record is not None else EXACT_FACTORY
            index, spec = faiss_index.build_index(
                vectors[modality], ids, factory,
                recall_queries=None if queried_by is None else vectors[queried_by][:RECALL_QUERIES],
                queries_label=None if queried_by is None else f"{queried_by.value} (cross-modal)", use_gpu=self.use_gpu)
            self.content[modality] = ModalityContent(index=index, spec=spec)
            self.summary.counts[modality.value] = len(self.new_ids[modality])
        self.new_log.unlink(missing_ok=True)
        start_fold(self.live, self.new_ids, self.new_log)
        self._caught_up = state.generation
        self.summary.embed_s = time.perf_counter() - started
        log.info("reindex of %s prepared in %.1f s: %s", self.path, self.summary.embed_s, self.summary.counts)
        return self.summary

    def embed(self, items: Sequence[Item]) -> list[np.ndarray]:
        """The new model's vector of each item (all of one modality or mixed), in order; CannotReindex,
        naming them, if some cannot be embedded (an image file gone or changed into a broken one)."""
        found: dict[int, np.ndarray] = {}
        problems: list[str] = []
        for modality in Modality:
            chosen = [item for item in items if item.modality is modality]
            if not chosen:
                continue
            sources = [SourceItem(uri=item.uri, path=Path(item.uri) if modality is not Modality.TEXT else None,
                                  text=item.text) for item in chosen]
            if modality is Modality.VIDEO:
                self._embed_videos(chosen, sources, found, problems)
                continue
            if modality.own_space:
                self._keep_sounds(chosen, found)
                continue
            batches = image_batches(sources, self.encoder, 0, self.batch_size, self.workers, self.max_pixels) \
                if modality is Modality.IMAGE else text_batches(sources, 0, self.batch_size)
            bar = progress_bar(total=len(chosen), unit=modality.value, desc=f"embedding {modality.value}s again",
                               disable=not self.progress)
            for batch in batches:
                encode_batch(self.encoder, batch)
                for outcome in batch.outcomes:
                    item = chosen[outcome.position]
                    if outcome.problem is None and isinstance(outcome.payload, np.ndarray):
                        found[item.id] = outcome.payload
                    else:
                        problems.append(f"item {item.id} ({item.uri}): {outcome.problem or 'not embedded'}")
                bar.update(len(batch.outcomes))
            bar.close()
        if problems:
            more = f", and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
            raise CannotReindex(f"{len(problems)} items cannot be embedded again: {'; '.join(problems[:MAX_REPORTED])}"
                                f"{more}. Delete them (or put their files back), then reindex")
        return [found[item.id] for item in items]

    def _embed_videos(self, chosen: Sequence[Item], sources: list[SourceItem], found: dict[int, np.ndarray],
                      problems: list[str]) -> None:
        """Each video's segments' vectors (m, d) into `found`, cut as the bundle's were: the same file
        cuts into the same segments, so one that does not was changed, and is a problem."""
        sampling = VideoSampling().cutting_as(self.bundle.manifest.video)
        bar = progress_bar(total=len(chosen), unit="video", desc="embedding videos again", disable=not self.progress)
        for batch in video_batches(sources, self.encoder, 0, self.workers, sampling, self.batch_size):
            encode_video(self.encoder, batch, self.batch_size)
            for outcome in batch.outcomes:
                item, payload = chosen[outcome.position], outcome.payload
                if outcome.problem is not None or not isinstance(payload, VideoPayload) or payload.vectors is None:
                    problems.append(f"item {item.id} ({item.uri}): {outcome.problem or 'not embedded'}")
                elif payload.spans != segments.spans_of(item.extra):
                    problems.append(f"item {item.id} ({item.uri}): its video now cuts into {len(payload.spans)} "
                                    f"segments, not the {len(segments.spans_of(item.extra))} indexed; it changed")
                else:
                    found[item.id] = payload.vectors
            bar.update(len(batch.outcomes))
        bar.close()

    def _keep_sounds(self, chosen: Sequence[Item], found: dict[int, np.ndarray]) -> None:
        """Each sound's windows' vectors (m, d) into `found`, as they are: the audio model embedded them,
        and a new image model changes nothing of them (writes made meanwhile read in the log's latest
        snapshot)."""
        state = self.live.state()
        held = state.segment(Modality.AUDIO)
        for item in chosen:
            if item.id in state.items:
                found[item.id] = held.vectors[np.isin(segments.items_of(held.ids), [item.id])]
            else:
                found[item.id] = self.bundle.base_vectors(Modality.AUDIO, segments.segment_ids(
                    item.id, len(segments.spans_of(item.extra, Modality.AUDIO))))

    def catch_up(self) -> Carried:
        """Bring the new log up to date with what was written since the last catch-up, embedded again."""
        carried = fold_since(self.live, self._caught_up, self._state, self.new_ids, self.new_log, self.embed)
        self._caught_up = carried.generation
        return carried

    def commit(self) -> ReindexSummary:
        """Write the new bundle, carry over the writes made since `prepare`, swap it in, keep the old one."""
        started = time.perf_counter()
        carried: list[Carried] = []

        def move_log_in(staging: Path) -> None:
            for _ in range(CATCH_UP_PASSES):
                self.catch_up()
            os.replace(self.new_log, staging / LIVE_FILE)

        def carry_over(staging: Path) -> tuple[str, ...]:
            carried.append(fold_since(self.live, self._caught_up, self._state, self.new_ids, staging / LIVE_FILE,
                                      self.embed))
            return carried[-1].uris

        record: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "kind": "reindex",
            "from_model": self.summary.model_from, "to_model": self.summary.model_to,
            "generation": self._state.generation, "counts": self.summary.counts,
            "embed_s": round(self.summary.embed_s, 2)}
        _, self.summary.writes_held_s = write_compacted(
            self.path, self.bundle.manifest, self.content, iter(self.items), record, move_log_in, carry_over,
            model=(self.encoder.ref, self.encoder.embedding_dim), keep_old_at=previous_path(self.path))
        self.summary.carried = carried[-1].items + carried[-1].hidden
        self.summary.commit_s = time.perf_counter() - started
        log.info("%s: %s", self.path, self.summary.describe())
        return self.summary

    def close(self) -> None:
        self.new_log.unlink(missing_ok=True)
        self.live.close()
        self.bundle.close()


def _check_reindexable(manifest: Manifest, encoder: ClipEncoder) -> None:
    if manifest.model == encoder.ref:
        raise CannotReindex(f"the bundle was built with {encoder.ref.describe()} already")
    if manifest.fusion is not None:
        raise CannotReindex("a fused bundle (--fuse) is not reindexed: build it again with `indexer build --fuse` "
                            "and the new model")
    on_disk = [modality.value for modality, record in manifest.modalities.items() if record.index.params.get("on_disk")]
    if on_disk:
        raise CannotReindex(f"the {', '.join(on_disk)} index is on disk (IVF-PQ): build the bundle again with "
                            "`indexer build` and the new model")


def reindex(path: Path, encoder: ClipEncoder, **options: Any) -> ReindexSummary:
    """Reindex the bundle at `path` with `encoder`'s model while it is served (see the module's docstring);
    `options` go to Reindex. One compaction or reindex of a bundle runs at a time."""
    with compaction_lock(path):
        reindexing = Reindex(path, encoder, **options)
        try:
            reindexing.prepare()
            return reindexing.commit()
        finally:
            reindexing.close()


def rollback(path: Path, discard_live_changes: bool = False) -> Manifest:
    """Put back the bundle a reindex replaced, in one step; the reindexed one is kept in its place,
    so a second rollback undoes the first. Refused while the bundle served holds writes made since the
    switch (the other never saw them), unless `discard_live_changes`."""
    previous = previous_path(path)
    if not (previous / MANIFEST_FILE).is_file():
        raise CannotReindex(f"no earlier bundle is kept beside {path} ({previous.name}): nothing to roll back to")
    with compaction_lock(path), bundle_lock(path):
        written = live_generation(path) - live_generation(previous)
        if written > 0 and not discard_live_changes:
            raise CannotReindex(f"{path} was written to {written} times since the switch, and the earlier bundle "
                                "never saw those writes; reindex with its model instead, or pass "
                                "--discard-live-changes to drop them")
        replaced = swap_into_place(_restaged(previous, path), path)
        if replaced is not None:
            os.replace(replaced, previous)
    return read_manifest(path)


def _restaged(previous: Path, path: Path) -> Path:
    """The kept bundle, renamed as a staging folder beside `path` for swap_into_place."""
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.replace(previous, staging)
    return staging


def forget_previous(path: Path) -> bool:
    """Delete the bundle a reindex kept beside `path`; whether there was one."""
    previous = previous_path(path)
    if not previous.exists():
        return False
    shutil.rmtree(previous)
    return True

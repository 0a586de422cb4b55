"""Bring a served bundle up to date with its sources, through its live log (clipsearch.store.live).

Like rclip's folder sync, by mark and sweep:

* a new file is embedded and added;
* a changed file is embedded again and keeps its id. A file whose size and modification time
  match those recorded at the last sync is taken as unchanged without reading it; any other is
  read and hashed, and counts as changed only if its content hash differs;
* a file whose content is unchanged but whose caption or metadata sidecar changed keeps its vector
  and id, with the new caption and metadata;
* a file that disappeared while a file with the same content appeared elsewhere was moved or
  renamed: its vector is reused (no embedding), under the new path;
* an item whose file is gone is deleted.

It manages only the items that came from the sources it is given: images under the folder given
(every image item not uploaded over HTTP, for a manifest file), videos under the folder given
(cut into segments as the bundle's were; and their sound tracks, in a bundle that indexes them as
sounds), sounds under the folder given (cut into windows and embedded by the audio model as the
bundle's were), and texts from the file given
(give the same path as the build did: text items are named after it). Items added over HTTP are
left alone. The result equals a rebuild of the same sources (tests/test_sync.py checks it), except
that unchanged items keep their ids, and that generated captions are not made here. In a bundle
built with `--ocr` (its manifest records the settings), the text of every image embedded is read
as the build read it; an image whose content is unchanged keeps the text read before.

Everything is written in one transaction at the end, so an interrupted sync changes nothing and a
new run starts over; a search during a sync sees the collection before it or after it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.config import AudioSampling, OcrConfig, VideoSampling
from clipsearch.errors import SourceError
from clipsearch.ingest.loading import (
    LoadedBatch,
    VideoPayload,
    encode_batch,
    encode_video,
    image_batches,
    text_batches,
    video_batches,
)
from clipsearch.ingest.sounds import SoundPayload, encode_sounds, is_silent_video, sound_batches
from clipsearch.ingest.sources import (
    Columns,
    SourceItem,
    read_audio_source,
    read_image_source,
    read_text_source,
    read_video_source,
)
from clipsearch.modality import Modality
from clipsearch.model.audio import AudioEncoder, load_audio_encoder
from clipsearch.model.encoder import ClipEncoder
from clipsearch.store.bundle import Bundle
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_IMAGES, LiveLog, LiveState, NewItem, with_text_vectors
from clipsearch.store.ocr_text import ocr_part, ocr_problem, with_ocr, without_ocr
from clipsearch.store.segments import (
    AUDIO_KEY,
    VIDEO_KEY,
    is_sound_of_video,
    items_of,
    key_of,
    segment_ids,
    spans_of,
    with_spans,
)
from clipsearch.util.faults import kill_point
from clipsearch.util.files import file_sha256, sha256_hex
from clipsearch.util.progress import progress_bar


@dataclass
class SyncSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(uri, reason) of each source item left out."""
    elapsed_s: float = 0.0
    text_unread: list[tuple[str, str]] = field(default_factory=list)
    """(uri, reason) of each image added without its text: OCR timed out or failed on it."""

    def describe(self) -> str:
        unread = f", text of {len(self.text_unread)} not read" if self.text_unread else ""
        return (f"added {self.added}, updated {self.updated}, moved {self.moved}, removed {self.removed}, "
                f"unchanged {self.unchanged}, skipped {len(self.skipped)}{unread} in {self.elapsed_s:.1f} s")


@dataclass(frozen=True)
class SyncSources:
    images: Path | None = None
    texts: Path | None = None
    columns: Columns = field(default_factory=Columns)
    videos: Path | None = None
    video: VideoSampling = field(default_factory=VideoSampling)
    """The bounds on reading a video; each is cut as the bundle's videos were (its manifest's record)."""
    audio: Path | None = None
    sound: AudioSampling = field(default_factory=AudioSampling)
    """The bounds on reading a sound; each is cut, and embedded, as the bundle's sounds were (its manifest's record)."""


@dataclass
class _Plan:
    """What one modality's sync will write: items (with their vectors when known) and ids to delete."""

    writes: list[NewItem] = field(default_factory=list)
    embed: list[tuple[SourceItem, str, Item | None]] = field(default_factory=list)
    """Sources to embed, with their content hash and the item they update (None: a new item)."""
    deletes: list[int] = field(default_factory=list)


def sync(bundle: Bundle, live: LiveLog, encoder: ClipEncoder, sources: SyncSources, batch_size: int = 256,
         workers: int = 0, max_pixels: int = 64_000_000, progress: bool = True,
         audio: AudioEncoder | None = None) -> SyncSummary:
    """Compare the sources with the collection, embed what is new or changed, and apply it all at once.
    Sounds are embedded by `audio`, the audio model the bundle's manifest names (loaded here when not given)."""
    started = time.perf_counter()
    summary = SyncSummary()
    state = live.state()
    stats = live.file_stats()
    plans: list[_Plan] = []
    new_stats: dict[str, tuple[int, int, str]] = {}
    ocr = None if bundle.manifest.ocr is None else OcrConfig.from_record(bundle.manifest.ocr)
    video = sources.video.cutting_as(bundle.manifest.video)
    sound = sources.sound.cutting_as(bundle.manifest.audio)
    if sources.audio is not None and bundle.manifest.audio is None:
        raise SourceError("the bundle was built without sounds, so it has no audio model to embed them: "
                          "rebuild it with --audio", "audio")
    if sources.audio is not None or (sources.videos is not None and sound.video_sound):
        audio = audio or load_audio_encoder(sound.model, str(encoder.device))
    for modality, items, in_scope in _sources(bundle, sources, sound.video_sound):
        current = {item.uri: item for item in _collection_items(bundle, state, modality) if in_scope(item)}
        plan = _plan(modality, items, current, stats, new_stats, state, bundle, summary)
        # The batches are lazy: nothing is read or embedded when the plan has nothing to embed.
        if modality is Modality.VIDEO:
            _embed_timed(plan, modality, _videos_embedded(plan, encoder, batch_size, workers, video), progress,
                         summary)
        elif modality is Modality.AUDIO:
            assert audio is not None
            _embed_timed(plan, modality, _sounds_embedded(plan, audio, batch_size, workers, sound), progress,
                         summary)
        else:
            _embed(plan, modality, encoder, batch_size, workers, max_pixels, progress, summary, ocr)
        plans.append(plan)
    writes = [item for plan in plans for item in plan.writes]
    if bundle.fusion is not None:
        writes = with_text_vectors(writes, bundle.fusion.text_parts,
                                   lambda texts: list(encoder.encode_texts_in_batches(texts, batch_size)))
    kill_point("sync:embedded")
    live.apply(writes, [item_id for plan in plans for item_id in plan.deletes], new_stats)
    summary.elapsed_s = time.perf_counter() - started
    return summary


InScope = Callable[[Item], bool]
"""Whether an item came from the source being synced."""


def _sources(bundle: Bundle, sources: SyncSources,
             video_sound: bool) -> list[tuple[Modality, list[SourceItem], InScope]]:
    """Each source's modality, its items, and which of the collection's items came from it; with
    `video_sound`, the videos again, for their sound tracks (sound items of their own)."""
    found: list[tuple[Modality, list[SourceItem], InScope]] = []
    if sources.images is not None:
        items = read_image_source(sources.images, sources.columns)
        uploads = str((bundle.path / LIVE_IMAGES).resolve()) + os.sep
        if sources.images.is_dir():
            root = str(sources.images.resolve()) + os.sep
            found.append((Modality.IMAGE, items, lambda item: item.uri.startswith(root)))
        else:
            found.append((Modality.IMAGE, items, lambda item: not item.uri.startswith(uploads)))
    if sources.videos is not None:
        under_videos = _under(sources.videos)
        videos = read_video_source(sources.videos)
        found.append((Modality.VIDEO, videos, lambda item: under_videos(item.uri)))
        if video_sound:
            # A silent video has no sound item: it is read again (its header only) at every sync.
            found.append((Modality.AUDIO, [replace(video, sound_of_video=True) for video in videos],
                          lambda item: under_videos(item.uri) and is_sound_of_video(item.extra)))
    if sources.audio is not None:
        under_audio = _under(sources.audio)
        found.append((Modality.AUDIO, read_audio_source(sources.audio),
                      lambda item: under_audio(item.uri) and not is_sound_of_video(item.extra)))
    if sources.texts is not None:
        prefix = f"{sources.texts}#L"
        found.append((Modality.TEXT, read_text_source(sources.texts, sources.columns),
                      lambda item: item.uri.startswith(prefix)))
    return found


def _under(source: Path) -> Callable[[str], bool]:
    """Whether a uri is a file under the folder `source`, or is the file `source`."""
    under = str(source.resolve()) + (os.sep if source.is_dir() else "")
    return (lambda uri: uri.startswith(under)) if under.endswith(os.sep) else (lambda uri: uri == under)


def _collection_items(bundle: Bundle, state: LiveState, modality: Modality) -> list[Item]:
    """Every item of `modality` now in the collection: base items not hidden, then live ones."""
    hidden = set(state.removed_of(modality).tolist())
    base = [item for item in bundle.items if item.modality is modality and item.id not in hidden]
    return base + [item for item in state.items.values() if item.modality is modality]


def _plan(modality: Modality, sources: list[SourceItem], current: dict[str, Item],
          stats: dict[str, tuple[int, int, str]], new_stats: dict[str, tuple[int, int, str]], state: LiveState,
          bundle: Bundle, summary: SyncSummary) -> _Plan:
    plan = _Plan()
    present = {source.uri for source in sources if source.problem is None}
    vanished: dict[str, list[Item]] = defaultdict(list)  # by content hash: candidates for moves
    for uri, item in current.items():
        if uri not in present:
            vanished[item.content_hash].append(item)
    kept_hashes = {item.content_hash for uri, item in current.items() if uri in present}
    for source in sources:
        if source.problem is not None:
            summary.skipped.append((source.uri, source.problem))
            continue
        content_hash = _content_hash(source, stats, new_stats)
        if content_hash is None:
            summary.skipped.append((source.uri, "cannot read file"))
            continue
        existing = current.get(source.uri)
        if existing is not None and existing.content_hash == content_hash:
            if (existing.text, _from_sidecars(existing.extra)) == (source.text, _from_sidecars(source.extra)):
                summary.unchanged += 1
            else:  # a sidecar changed: same vector and read text, new caption or metadata
                plan.writes.append(_new_item(_keeping_text(source, existing), modality, content_hash,
                                             _vector(existing, state, bundle)))
                summary.updated += 1
        elif existing is not None:
            plan.embed.append((source, content_hash, existing))
        elif vanished.get(content_hash):
            moved = vanished[content_hash].pop()
            plan.writes.append(_new_item(_keeping_text(source, moved), modality, content_hash,
                                         _vector(moved, state, bundle)))
            plan.deletes.append(moved.id)
            summary.moved += 1
        elif content_hash in kept_hashes:
            summary.skipped.append((source.uri, "duplicate of an item already indexed"))
        else:
            plan.embed.append((source, content_hash, None))
            kept_hashes.add(content_hash)
    for items in vanished.values():
        plan.deletes.extend(item.id for item in items)
        summary.removed += len(items)
    return plan


def _from_sidecars(extra: dict[str, Any]) -> dict[str, Any]:
    """An item's metadata as its sidecar gives it: without the text read in it or its video's (or sound's) segments."""
    return {key: value for key, value in without_ocr(extra).items() if key not in (VIDEO_KEY, AUDIO_KEY)}


def _keeping_text(source: SourceItem, existing: Item) -> SourceItem:
    """`source` with the text read from `existing`'s image, or the segments of `existing`'s video (or
    sound), which has the same content."""
    if existing.modality.timed:
        key = key_of(existing.modality)
        record = {name: value for name, value in existing.extra.get(key, {}).items() if name != "segments"}
        return replace(source, extra=with_spans(source.extra, record, spans_of(existing.extra, existing.modality),
                                                key))
    return replace(source, extra=with_ocr(source.extra, ocr_part(existing.extra)))


def _embed(plan: _Plan, modality: Modality, encoder: ClipEncoder, batch_size: int, workers: int, max_pixels: int,
           progress: bool, summary: SyncSummary, ocr: OcrConfig | None = None) -> None:
    """Embed the planned sources as the build does (reading images' text with `ocr`); one that fails
    is skipped (and an update of it deletes the old item, as a rebuild would leave it out)."""
    if not plan.embed:
        return
    sources = [source for source, _, _ in plan.embed]
    batches = image_batches(sources, encoder, 0, batch_size, workers, max_pixels, ocr) \
        if modality is Modality.IMAGE else text_batches(sources, 0, batch_size)
    bar = progress_bar(total=len(sources), unit=modality.value, desc=f"embedding {modality.value}s",
                       disable=not progress)
    for batch in batches:
        encode_batch(encoder, batch)
        for outcome in batch.outcomes:
            source, content_hash, existing = plan.embed[outcome.position]
            if outcome.problem is not None or not isinstance(outcome.payload, np.ndarray):
                summary.skipped.append((source.uri, outcome.problem or "could not be embedded"))
                if existing is not None:  # its file changed into one that cannot be used: gone, as in a rebuild
                    plan.deletes.append(existing.id)
                    summary.removed += 1
                continue
            plan.writes.append(_new_item(outcome.source, modality, content_hash, outcome.payload))
            if (problem := ocr_problem(outcome.source.extra)) is not None:
                summary.text_unread.append((source.uri, problem))
            summary.added += existing is None
            summary.updated += existing is not None
        bar.update(len(batch.outcomes))
    bar.close()


def _videos_embedded(plan: _Plan, encoder: ClipEncoder, batch_size: int, workers: int,
                     sampling: VideoSampling) -> Iterator[LoadedBatch]:
    for batch in video_batches([source for source, _, _ in plan.embed], encoder, 0, workers, sampling, batch_size):
        encode_video(encoder, batch, batch_size)
        yield batch


def _sounds_embedded(plan: _Plan, encoder: AudioEncoder, batch_size: int, workers: int,
                     sampling: AudioSampling) -> Iterator[LoadedBatch]:
    for batch in sound_batches([source for source, _, _ in plan.embed], encoder, 0, workers, sampling, batch_size,
                               lambda position: False):
        encode_sounds(encoder, batch, batch_size)
        yield batch


def _embed_timed(plan: _Plan, modality: Modality, batches: Iterator[LoadedBatch], progress: bool,
                 summary: SyncSummary) -> None:
    """Take the planned videos or sounds, cut and embedded as the build does, into the plan; one that
    fails is skipped (an update of it deletes the old item, as in `_embed`)."""
    if not plan.embed:
        return
    unit = "video" if modality is Modality.VIDEO else "recording"
    bar = progress_bar(total=len(plan.embed), unit=unit, desc=f"embedding {modality.value}",
                       disable=not progress)
    for batch in batches:
        for outcome in batch.outcomes:
            source, content_hash, existing = plan.embed[outcome.position]
            payload = outcome.payload
            if is_silent_video(outcome):  # no sound track (any more): no sound item, and nothing to report
                if existing is not None:
                    plan.deletes.append(existing.id)
                    summary.removed += 1
                continue
            if outcome.problem is not None or not isinstance(payload, VideoPayload | SoundPayload) \
                    or payload.vectors is None:
                summary.skipped.append((source.uri, outcome.problem or "could not be embedded"))
                if existing is not None:
                    plan.deletes.append(existing.id)
                    summary.removed += 1
                continue
            cut = replace(source, extra=with_spans(source.extra, payload.record, payload.spans, key_of(modality)))
            plan.writes.append(_new_item(cut, modality, content_hash, payload.vectors))
            summary.added += existing is None
            summary.updated += existing is not None
        bar.update(len(batch.outcomes))
    bar.close()


def _content_hash(source: SourceItem, stats: dict[str, tuple[int, int, str]],
                  new_stats: dict[str, tuple[int, int, str]]) -> str | None:
    if source.path is None:
        return sha256_hex((source.text or "").encode())
    try:
        stat = source.path.stat()
        recorded = stats.get(source.uri)
        if recorded is not None and recorded[:2] == (stat.st_size, stat.st_mtime_ns):
            content_hash = recorded[2]
        else:
            content_hash = file_sha256(source.path)
    except OSError:
        return None
    new_stats[source.uri] = (stat.st_size, stat.st_mtime_ns, content_hash)
    return content_hash


def _vector(item: Item, state: LiveState, bundle: Bundle) -> np.ndarray:
    """The vector an item holds (a video's or a sound's: its segments', (m, d))."""
    if item.modality.timed:
        if item.id in state.items:
            held = state.segment(item.modality)
            rows: np.ndarray = held.vectors[np.isin(items_of(held.ids), [item.id])]
            return rows
        return bundle.base_vectors(item.modality, segment_ids(item.id, len(spans_of(item.extra, item.modality))))
    live = state.segment(item.modality).vector(item.id)
    if live is not None:
        return live
    return np.asarray(bundle.indices[item.modality].reconstruct(item.id), dtype=np.float32)


def _new_item(source: SourceItem, modality: Modality, content_hash: str, vector: np.ndarray) -> NewItem:
    # The key is the uri, as a built item's is: a later sync or rebuild names the same file alike.
    return NewItem(source.uri, modality, source.uri, source.text, source.extra, content_hash, vector)


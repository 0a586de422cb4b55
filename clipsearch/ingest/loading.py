"""Source items into batches ready to encode: texts as they are, images and videos decoded in worker processes.

Each item becomes an Outcome: its content hash and what to encode, or the reason it is skipped.
Image files are read, hashed, decoded and prepared in DataLoader workers, and each batch's pixels
arrive stacked in one tensor, pinned for the GPU when there is one. With OCR (clipsearch.model.ocr)
the workers also read each image's text, each with a reader of its own, into the item's metadata
(clipsearch.store.ocr_text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clipsearch.config import OcrConfig, VideoSampling
from clipsearch.errors import ImageDecodeError, VideoDecodeError
from clipsearch.ingest.shards import Shard
from clipsearch.ingest.sources import SourceItem
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.ocr import reader_for
from clipsearch.model.preprocess import ImagePreparer
from clipsearch.store.ocr_text import read_image_text, with_ocr
from clipsearch.store.segments import segment_ids, with_spans
from clipsearch.util.files import file_sha256, sha256_hex
from clipsearch.util.images import decode_image
from clipsearch.util.video import read_video


@dataclass
class Outcome:
    """What became of one source item: a vector, or the reason it was left out."""

    position: int
    source: SourceItem
    content_hash: str | None = None
    payload: Any = None
    problem: str | None = None
    duplicate_of: int | None = None


@dataclass
class LoadedBatch:
    """One batch of outcomes; for images, the decoded ones' pixels stacked in the loader worker."""

    outcomes: list[Outcome]
    pixels: torch.Tensor | None = None
    """uint8 (m, 3, H, W) (float32 for models whose preprocessing cannot be split), one row per `decoded`."""
    decoded: list[Outcome] = field(default_factory=list)

    def pin_memory(self) -> LoadedBatch:
        """Called by the DataLoader's pinning thread: page-locked pixels copy to the GPU asynchronously."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def text_batches(items: Sequence[SourceItem], start: int, batch_size: int) -> Iterator[LoadedBatch]:
    """Batches of `items` from `start` on; a text's payload is the text itself."""
    for batch_start in range(start, len(items), batch_size):
        batch = []
        for position in range(batch_start, min(batch_start + batch_size, len(items))):
            item = items[position]
            batch.append(text_outcome(position, item))
        yield LoadedBatch(batch)


def text_outcome(position: int, item: SourceItem) -> Outcome:
    """A text item, hashed, with its text as the payload."""
    text = item.text or ""
    return Outcome(position, item, content_hash=sha256_hex(text.encode()), payload=text, problem=item.problem)


class _ImageDataset(Dataset[Outcome]):
    """Reads, hashes, decodes and prepares one image's pixels; runs in DataLoader worker processes."""

    def __init__(self, items: Sequence[SourceItem], start: int, prepare: ImagePreparer,
                 image_size: int, max_pixels: int, ocr: OcrConfig | None) -> None:
        self.items, self.start, self.prepare = items, start, prepare
        self.image_size, self.max_pixels, self.ocr = image_size, max_pixels, ocr

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, offset: int) -> Outcome:
        position = self.start + offset
        return read_and_prepare(position, self.items[position], self.prepare, self.image_size, self.max_pixels,
                                self.ocr)


def read_and_prepare(position: int, item: SourceItem, prepare: ImagePreparer, image_size: int,
                     max_pixels: int, ocr: OcrConfig | None = None) -> Outcome:
    """Read, hash, decode and prepare one image: its pixels as the payload, or the reason it is
    skipped. Every engine (DataLoader workers here, Ray tasks in clipsearch.ingest.distributed) calls this,
    so that each gives the model the same pixels. With `ocr`, the image's text is read into its
    metadata too; an image whose text cannot be read is still used, and its metadata says why."""
    if item.problem is not None or item.path is None:
        return Outcome(position, item, problem=item.problem or "no file")
    try:
        data = item.path.read_bytes()
    except OSError as error:
        return Outcome(position, item, problem=f"cannot read file: {error.strerror or error}")
    try:
        image = decode_image(data, max_pixels, draft_size=image_size)
        tensor = prepare(image)
    except ImageDecodeError as error:
        return Outcome(position, item, content_hash=sha256_hex(data), problem=error.reason)
    except Exception as error:  # a preprocessing failure must skip the file, not stop the build
        return Outcome(position, item, content_hash=sha256_hex(data), problem=f"cannot preprocess: {error}")
    if ocr is not None:
        item = replace(item, extra=with_ocr(item.extra, read_image_text(reader_for(ocr), data, max_pixels)))
    return Outcome(position, item, content_hash=sha256_hex(data), payload=tensor)


def _stack_pixels(outcomes: list[Outcome]) -> LoadedBatch:
    """The loader's collate function: runs in the worker, so the main process gets one tensor per batch."""
    decoded = [outcome for outcome in outcomes if outcome.problem is None]
    pixels = torch.stack([outcome.payload for outcome in decoded]) if decoded else None
    for outcome in decoded:
        outcome.payload = None
    return LoadedBatch(outcomes, pixels, decoded)


def image_batches(items: Sequence[SourceItem], encoder: ClipEncoder, start: int, batch_size: int, workers: int,
                  max_pixels: int, ocr: OcrConfig | None = None) -> Iterator[LoadedBatch]:
    """Batches of `items` from `start` on, read, decoded and prepared (their text read, with `ocr`)
    in `workers` processes."""
    dataset = _ImageDataset(items, start, encoder.prepare_image, encoder.image_size, max_pixels, ocr)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_stack_pixels,
                        pin_memory=encoder.device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
                        persistent_workers=False)
    yield from loader


@dataclass
class VideoPayload:
    """A video read for embedding: its segments' first frames prepared for the model, stacked
    (uint8 (m, 3, H, W)), their spans, and what its header said; once embedded, the segments'
    vectors (float32 (m, d)), and no pixels."""

    pixels: torch.Tensor | None
    spans: list[tuple[float, float]]
    record: dict[str, Any]
    vectors: np.ndarray | None = None


class _VideoDataset(Dataset[Outcome]):
    """Reads, hashes, segments and prepares one video; runs in DataLoader worker processes."""

    def __init__(self, items: Sequence[SourceItem], start: int, prepare: ImagePreparer,
                 sampling: VideoSampling) -> None:
        self.items, self.start, self.prepare, self.sampling = items, start, prepare, sampling

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, offset: int) -> Outcome:
        position = self.start + offset
        return read_and_prepare_video(position, self.items[position], self.prepare, self.sampling)


def hash_of_file(position: int, item: SourceItem) -> tuple[str, Path] | Outcome:
    """The SHA-256 of a video's or a sound's file (read whole before it is decoded) and its path; or,
    when it has none or cannot be read, the Outcome that skips it."""
    if item.problem is not None or item.path is None:
        return Outcome(position, item, problem=item.problem or "no file")
    try:
        return file_sha256(item.path), item.path
    except OSError as error:
        return Outcome(position, item, problem=f"cannot read file: {error.strerror or error}")


def read_and_prepare_video(position: int, item: SourceItem, prepare: ImagePreparer,
                           sampling: VideoSampling) -> Outcome:
    """Read, hash, segment and prepare one video: its VideoPayload, or the reason it is skipped."""
    hashed = hash_of_file(position, item)
    if isinstance(hashed, Outcome):
        return hashed
    content_hash, path = hashed
    try:
        video = read_video(path, sampling)
        pixels = torch.stack([prepare(segment.frame) for segment in video.segments])
    except VideoDecodeError as error:
        return Outcome(position, item, content_hash=content_hash, problem=error.reason)
    except Exception as error:  # a preprocessing failure must skip the file, not stop the build
        return Outcome(position, item, content_hash=content_hash, problem=f"cannot preprocess: {error}")
    spans = [(segment.start_s, segment.end_s) for segment in video.segments]
    return Outcome(position, item, content_hash=content_hash, payload=VideoPayload(pixels, spans, video.record()))


def video_batches(items: Sequence[SourceItem], encoder: ClipEncoder, start: int, workers: int,
                  sampling: VideoSampling, frames_per_batch: int = 1,
                  starts_batch: Callable[[int], bool] | None = None) -> Iterator[LoadedBatch]:
    """Batches of whole videos of `items` from `start` on, read and cut in `workers` processes: each
    holds videos until their segments reach `frames_per_batch` frames, so that short videos share a
    batch of the model's; a video at a position where `starts_batch` holds (a shard's first) starts a
    new one, so that a resumed build makes the same batches."""
    dataset = _VideoDataset(items, start, encoder.prepare_image, sampling)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers > 0 else None,
                        persistent_workers=False)
    return whole_items_in_batches(loader, frames_per_batch, starts_batch,
                                  lambda payload: len(payload.spans) if isinstance(payload, VideoPayload) else 0)


def whole_items_in_batches(outcomes: Iterable[Outcome], rows_per_batch: int,
                           starts_batch: Callable[[int], bool] | None,
                           rows_of: Callable[[Any], int]) -> Iterator[LoadedBatch]:
    """Outcomes of items of several rows each (a video's segments, a recording's windows) in batches
    of whole items: each batch holds items until their rows (`rows_of(payload)`) reach
    `rows_per_batch`; an item at a position where `starts_batch` holds (a shard's first) starts a new
    one, so that a resumed build makes the same batches."""
    pending: list[Outcome] = []
    rows = 0
    for outcome in outcomes:
        if pending and starts_batch is not None and starts_batch(outcome.position):
            yield LoadedBatch(pending)
            pending, rows = [], 0
        pending.append(outcome)
        rows += rows_of(outcome.payload)
        if rows >= rows_per_batch:
            yield LoadedBatch(pending)
            pending, rows = [], 0
    if pending:
        yield LoadedBatch(pending)


def encode_video(encoder: ClipEncoder, batch: LoadedBatch, batch_size: int) -> None:
    """Embed the segments of the batch's usable videos together, `batch_size` frames at a time: each
    payload's pixels become its segments' vectors."""
    usable = [(outcome.payload, outcome.payload.pixels) for outcome in batch.outcomes
              if outcome.problem is None and isinstance(outcome.payload, VideoPayload)
              and outcome.payload.pixels is not None]
    if not usable:
        return
    pixels = torch.cat([frames for _, frames in usable])
    vectors = np.concatenate([encoder.encode_images(pixels[start:start + batch_size])
                              for start in range(0, len(pixels), batch_size)])
    ends = np.cumsum([len(frames) for _, frames in usable])
    for (payload, _), rows in zip(usable, np.split(vectors, ends[:-1]), strict=True):
        payload.vectors, payload.pixels = rows, None


def video_shard_of(outcomes: list[Outcome], first_id: int, dim: int) -> Shard:
    """The shard of `outcomes` (videos): each video's segments' ids (clipsearch.store.segments) and
    vectors, and one record per video, its metadata holding its segments' spans."""
    ids, vectors, records = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)], []
    for outcome in outcomes:
        item_id, extra = first_id + outcome.position, outcome.source.extra
        if outcome.problem is None and isinstance(outcome.payload, VideoPayload) \
                and outcome.payload.vectors is not None:
            ids.append(segment_ids(item_id, len(outcome.payload.spans)))
            vectors.append(outcome.payload.vectors.astype(np.float32, copy=False))
            extra = with_spans(extra, outcome.payload.record, outcome.payload.spans)
        records.append({"id": item_id, "uri": outcome.source.uri, "text": outcome.source.text, "extra": extra,
                        "hash": outcome.content_hash, "problem": outcome.problem,
                        "duplicate_of": outcome.duplicate_of})
    return Shard(np.concatenate(ids), np.concatenate(vectors), records)


def encode_batch(encoder: ClipEncoder, batch: LoadedBatch) -> None:
    """Set each usable outcome's payload (its text, or nothing for an image) to its embedding."""
    if batch.pixels is not None:
        # Rows of items found to be duplicates after decoding are encoded too, then dropped: cheaper
        # than restacking the batch.
        vectors = encoder.encode_images(batch.pixels)
        for outcome, vector in zip(batch.decoded, vectors, strict=True):
            if outcome.problem is None:
                outcome.payload = vector
        return
    usable = [outcome for outcome in batch.outcomes if outcome.problem is None and isinstance(outcome.payload, str)]
    if usable:
        vectors = encoder.encode_texts([outcome.payload for outcome in usable])
        for outcome, vector in zip(usable, vectors, strict=True):
            outcome.payload = vector


def mark_duplicates(batch: list[Outcome], seen: dict[str, int], first_id: int, keep_duplicates: bool) -> None:
    """Mark each usable outcome whose content was seen before as a duplicate of the first item with
    it (by id), and add the others to `seen` (content hash → id): applied in position order, the
    first item with a content keeps it, whichever engine embedded it."""
    for outcome in batch:
        if outcome.problem is not None or outcome.content_hash is None:
            continue
        if outcome.content_hash in seen and not keep_duplicates:
            outcome.duplicate_of = seen[outcome.content_hash]
            outcome.problem = f"duplicate of item {outcome.duplicate_of}"
            outcome.payload = None
        else:
            seen.setdefault(outcome.content_hash, first_id + outcome.position)


def shard_of(outcomes: list[Outcome], first_id: int, dim: int) -> Shard:
    """The shard of `outcomes`: ids and vectors of the encoded ones (payloads), records of all."""
    encoded = [outcome for outcome in outcomes if outcome.problem is None]
    vectors = np.stack([outcome.payload for outcome in encoded]).astype(np.float32) if encoded \
        else np.zeros((0, dim), dtype=np.float32)
    records = [{"id": first_id + outcome.position, "uri": outcome.source.uri, "text": outcome.source.text,
                "extra": outcome.source.extra, "hash": outcome.content_hash, "problem": outcome.problem,
                "duplicate_of": outcome.duplicate_of}
               for outcome in outcomes]
    return Shard(np.array([first_id + outcome.position for outcome in encoded], dtype=np.int64), vectors, records)

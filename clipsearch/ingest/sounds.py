"""Sound files in a build: each recording read, cut into windows and embedded by the audio model, into shards.

A recording is one item; so is a video's sound track, read from the video file, in a build that
indexes them (clipsearch.store.segments.SOUND_OF_VIDEO). Its windows
(clipsearch.util.audio.window_spans) are its segments, rows of the audio index under segment ids
(clipsearch.store.segments), as a video's scenes are. Files are
read, hashed and resampled in DataLoader worker processes while the model embeds the ones before;
a file that cannot be read is skipped and reported, as an image that cannot be decoded is. Shards
are resumable as the other modalities' are: a rerun goes on from the first unfinished one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from clipsearch.config import AudioSampling
from clipsearch.errors import AudioDecodeError, NoSoundTrack
from clipsearch.ingest.loading import LoadedBatch, Outcome, hash_of_file, mark_duplicates, whole_items_in_batches
from clipsearch.ingest.shards import Shard, ShardStore
from clipsearch.ingest.sources import SourceItem
from clipsearch.modality import Modality
from clipsearch.model.audio import AudioEncoder
from clipsearch.store.segments import AUDIO_KEY, SOUND_OF_VIDEO, segment_ids, with_spans
from clipsearch.util.audio import read_audio
from clipsearch.util.progress import progress_bar

MAX_WINDOWS_PER_PASS = 32
"""Most windows in one pass of the audio tower, whatever the build's batch size: each window is a
256×256 spectrogram image through HTSAT's Swin blocks, far more than an image's pass of a CLIP
tower holds (bench.sounds measured its throughput at this size)."""


@dataclass
class SoundPayload:
    """A recording read for embedding: its samples (mono float32 at the model's rate), its windows'
    spans and what its header said; once embedded, the windows' vectors (float32 (m, d)), and no
    samples. The samples travel from the loader worker once, whole: windows overlap, and cut there
    each would be copied on its own."""

    samples: np.ndarray | None
    sample_rate: int
    spans: list[tuple[float, float]]
    record: dict[str, Any]
    vectors: np.ndarray | None = None

    def windows(self) -> list[np.ndarray]:
        """The windows' samples (views of the recording's)."""
        assert self.samples is not None
        return [self.samples[round(start * self.sample_rate):round(end * self.sample_rate)]
                for start, end in self.spans]


def read_and_cut(position: int, item: SourceItem, sample_rate: int, window_s: float,
                 sampling: AudioSampling) -> Outcome:
    """Read, hash and cut one recording (or a video's sound track): its SoundPayload, or the reason it
    is skipped; for a video without sound, neither (it has no sound item, and nothing is wrong with it)."""
    hashed = hash_of_file(position, item)
    if isinstance(hashed, Outcome):
        return hashed
    content_hash, path = hashed
    try:
        clip = read_audio(path, sample_rate, sampling, of_video=item.sound_of_video)
    except NoSoundTrack:
        return Outcome(position, item)
    except AudioDecodeError as error:
        return Outcome(position, item, content_hash=content_hash, problem=error.reason)
    record = clip.record() | ({SOUND_OF_VIDEO: True} if item.sound_of_video else {})
    payload = SoundPayload(clip.samples, clip.sample_rate, clip.windows(window_s, sampling.hop_s), record)
    return Outcome(position, item, content_hash=content_hash, payload=payload)


def is_silent_video(outcome: Outcome) -> bool:
    """Whether `outcome` is a video's sound track that is not there (read_and_cut): no item, no report."""
    return outcome.source.sound_of_video and outcome.problem is None and outcome.payload is None


class _SoundDataset(Dataset[Outcome]):
    """Reads, hashes and cuts one recording; runs in DataLoader worker processes."""

    def __init__(self, items: Sequence[SourceItem], start: int, sample_rate: int, window_s: float,
                 sampling: AudioSampling) -> None:
        self.items, self.start = items, start
        self.sample_rate, self.window_s, self.sampling = sample_rate, window_s, sampling

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, offset: int) -> Outcome:
        position = self.start + offset
        return read_and_cut(position, self.items[position], self.sample_rate, self.window_s, self.sampling)


def sound_batches(items: Sequence[SourceItem], encoder: AudioEncoder, start: int, workers: int,
                  sampling: AudioSampling, windows_per_batch: int,
                  starts_batch: Callable[[int], bool]) -> Iterator[LoadedBatch]:
    """Batches of whole recordings of `items` from `start` on, read in `workers` processes: each holds
    recordings until their windows reach `windows_per_batch`; a recording where `starts_batch` holds
    (a shard's first) starts a new one, so that a resumed build makes the same batches."""
    dataset = _SoundDataset(items, start, encoder.sampling_rate, encoder.window_s, sampling)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers > 0 else None,
                        persistent_workers=False)
    return whole_items_in_batches(loader, windows_per_batch, starts_batch,
                                  lambda payload: len(payload.spans) if isinstance(payload, SoundPayload) else 0)


def encode_sounds(encoder: AudioEncoder, batch: LoadedBatch, batch_size: int) -> None:
    """Embed the windows of the batch's usable recordings together, `batch_size` at a time (at most
    MAX_WINDOWS_PER_PASS): each payload's samples become its windows' vectors."""
    usable = [outcome.payload for outcome in batch.outcomes
              if outcome.problem is None and isinstance(outcome.payload, SoundPayload)
              and outcome.payload.samples is not None]
    if not usable:
        return
    windows = [window for payload in usable for window in payload.windows()]
    batch_size = min(batch_size, MAX_WINDOWS_PER_PASS)
    vectors = np.concatenate([encoder.encode_audio(windows[start:start + batch_size])
                              for start in range(0, len(windows), batch_size)])
    ends = np.cumsum([len(payload.spans) for payload in usable])
    for payload, rows in zip(usable, np.split(vectors, ends[:-1]), strict=True):
        payload.vectors, payload.samples = rows, None


def sound_shard_of(outcomes: list[Outcome], first_id: int, dim: int) -> Shard:
    """The shard of `outcomes` (recordings): each one's windows' ids and vectors, and one record per
    recording, its metadata holding its windows' spans under `audio`."""
    ids, vectors, records = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)], []
    for outcome in outcomes:
        if is_silent_video(outcome):
            continue
        item_id, extra = first_id + outcome.position, outcome.source.extra
        payload = outcome.payload
        if outcome.problem is None and isinstance(payload, SoundPayload) and payload.vectors is not None:
            ids.append(segment_ids(item_id, len(payload.spans)))
            vectors.append(payload.vectors.astype(np.float32, copy=False))
            extra = with_spans(extra, payload.record, payload.spans, AUDIO_KEY)
        records.append({"id": item_id, "uri": outcome.source.uri, "text": outcome.source.text, "extra": extra,
                        "hash": outcome.content_hash, "problem": outcome.problem,
                        "duplicate_of": outcome.duplicate_of})
    return Shard(np.concatenate(ids), np.concatenate(vectors), records)


@dataclass(frozen=True)
class SoundBuild:
    """How a build embeds its recordings: the model, the cutting, and the build's batching."""

    encoder: AudioEncoder
    sampling: AudioSampling
    batch_size: int
    shard_size: int
    workers: int
    keep_duplicates: bool
    progress: bool


def encode_sounds_into_shards(build: SoundBuild, items: list[SourceItem], first_id: int, store: ShardStore,
                              on_shard_written: Callable[[Path], None] | None) -> int:
    """Embed `items` (recordings) from the first unfinished shard on; returns how many shards were done."""
    shard_size = build.shard_size
    done = store.finished(Modality.AUDIO, -(-len(items) // shard_size))
    seen = store.content_hashes(Modality.AUDIO, done)
    start = min(done * shard_size, len(items))
    bar = progress_bar(total=len(items), initial=start, unit="recording", desc="encoding sounds",
                       disable=not build.progress, smoothing=0.1, dynamic_ncols=True)
    shard: list[Outcome] = []
    for batch in sound_batches(items, build.encoder, start, build.workers, build.sampling, build.batch_size,
                               lambda position: position % shard_size == 0):
        mark_duplicates(batch.outcomes, seen, first_id, build.keep_duplicates)
        encode_sounds(build.encoder, batch, build.batch_size)
        shard.extend(batch.outcomes)
        bar.update(len(batch.outcomes))
        if len(shard) == shard_size or batch.outcomes[-1].position == len(items) - 1:
            path = store.write(Modality.AUDIO, shard[0].position // shard_size,
                               sound_shard_of(shard, first_id, build.encoder.embedding_dim))
            shard = []
            if on_shard_written is not None:
                on_shard_written(path)
    bar.close()
    return done

"""A timed item's segments (a video's scenes, a recording's windows): each one vector of its
modality's index, held under an id of its own.

A video or a recording is one item (one row of items.sqlite, one id); each of its segments is a row
of the video (or audio) index, with the id `item_id << SEGMENT_BITS | position`, so that a search's
result names the item and the moment at once, and the segments of a set of items are found among an
index's ids with one shift. The time spans of the segments are kept in the item's metadata under
`video` (or `audio`), with what the file's header said, in position order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch.modality import Modality

SEGMENT_BITS = 16
MAX_SEGMENTS = 1 << SEGMENT_BITS
"""Most segments one video may have (clipsearch.config.VideoSampling.max_segments stays below it)."""
MAX_VIDEO_ITEM_ID = (1 << (63 - SEGMENT_BITS)) - 1
"""The largest item id a video may have: its segments' ids must stay int64."""
VIDEO_KEY = "video"
"""An item's metadata key for its video: duration_s, width, height, codec, container, and `segments`."""
AUDIO_KEY = "audio"
"""An item's metadata key for its recording: duration_s, sample_rate, channels, codec, container, and `segments`
(and `of_video`, true, in a video's sound track: SOUND_OF_VIDEO)."""
SOUND_OF_VIDEO = "of_video"
"""In a sound item's recording record, marks it as the sound track of the video item with the same key
(and uri): indexed as a sound, written, edited and deleted with its video (clipsearch.search.writes,
clipsearch.ingest.sync). Its container is the video's (clipsearch.util.video's family names)."""


@dataclass(frozen=True, order=True)
class SegmentSpan:
    """One moment of a video or a recording: its position among the item's segments and its time span."""

    position: int
    start_s: float
    end_s: float


def segment_ids(item_id: int, count: int) -> np.ndarray:
    """The ids (int64, ascending) of the `count` segments of video item `item_id`."""
    if not 0 <= item_id <= MAX_VIDEO_ITEM_ID:
        raise ValueError(f"a video item's id must be between 0 and {MAX_VIDEO_ITEM_ID}, got {item_id}")
    if not 0 < count <= MAX_SEGMENTS:
        raise ValueError(f"a video has 1 to {MAX_SEGMENTS} segments, got {count}")
    return (np.int64(item_id) << SEGMENT_BITS) + np.arange(count, dtype=np.int64)


def items_of(ids: np.ndarray) -> np.ndarray:
    """The item id of each segment id."""
    return np.asarray(ids, dtype=np.int64) >> SEGMENT_BITS


def positions_of(ids: np.ndarray) -> np.ndarray:
    """The position of each segment id among its item's segments."""
    return np.asarray(ids, dtype=np.int64) & (MAX_SEGMENTS - 1)


def of_items(item_ids: np.ndarray, held: np.ndarray) -> np.ndarray:
    """The ids among `held` (segment ids) that are segments of `item_ids`, in `held`'s order."""
    if not len(held) or not len(item_ids):
        return np.zeros(0, dtype=np.int64)
    return np.asarray(held, dtype=np.int64)[np.isin(items_of(held), item_ids)]


def count_items(held: np.ndarray) -> int:
    """How many items the segment ids `held` belong to."""
    return len(np.unique(items_of(held))) if len(held) else 0


def with_spans(extra: Mapping[str, Any], record: Mapping[str, Any], spans: Sequence[tuple[float, float]],
               key: str = VIDEO_KEY) -> dict[str, Any]:
    """An item's metadata with its video's (or, with `key` AUDIO_KEY, its recording's) record and its
    segments' spans."""
    return {**extra, key: {**record, "segments": [[round(start, 3), round(end, 3)] for start, end in spans]}}


def carried_over(metadata: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """New `metadata` for an item whose metadata was `extra`, with its video's or recording's record
    (its segments' spans) kept: a user's metadata replaces theirs, never the item's segments."""
    return {**metadata, **{key: extra[key] for key in (VIDEO_KEY, AUDIO_KEY) if key in extra}}


def is_sound_of_video(extra: Mapping[str, Any]) -> bool:
    """Whether the sound item whose metadata is `extra` is a video's sound track (SOUND_OF_VIDEO). A sound
    item's `audio` record is always the one its reading wrote (clipsearch.store.segments.carried_over);
    another item's `audio` metadata is its user's, and says nothing."""
    record = extra.get(AUDIO_KEY)
    return isinstance(record, Mapping) and record.get(SOUND_OF_VIDEO) is True


def key_of(modality: Modality) -> str:
    """Where an item of `modality` keeps its segments' record in its metadata."""
    return AUDIO_KEY if modality is Modality.AUDIO else VIDEO_KEY


def spans_of(extra: Mapping[str, Any], modality: Modality = Modality.VIDEO) -> list[tuple[float, float]]:
    """The time spans of a video's (or a recording's, with `modality`) segments, by position (none
    for other items)."""
    timed = extra.get(key_of(modality))
    segments = timed.get("segments") if isinstance(timed, Mapping) else None
    if not isinstance(segments, list):
        return []
    return [(float(span[0]), float(span[1])) for span in segments]


def span_of(extra: Mapping[str, Any], segment_id: int, modality: Modality = Modality.VIDEO) -> SegmentSpan | None:
    """The span of one segment of the video (or recording, with `modality`) whose metadata is `extra`."""
    position = int(positions_of(np.array([segment_id]))[0])
    spans = spans_of(extra, modality)
    return SegmentSpan(position, *spans[position]) if position < len(spans) else None

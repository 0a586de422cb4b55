"""A video item's segments: each one vector of the video index, held under an id of its own.

A video is one item (one row of items.sqlite, one id); each of its segments is a row of the video
index, with the id `item_id << SEGMENT_BITS | position`, so that a search's result names the item
and the moment at once, and the segments of a set of items are found among an index's ids with one
shift. The time spans of the segments are kept in the item's metadata under `video` (with what the
video's header said), in position order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SEGMENT_BITS = 16
MAX_SEGMENTS = 1 << SEGMENT_BITS
"""Most segments one video may have (clipsearch.config.VideoSampling.max_segments stays below it)."""
MAX_VIDEO_ITEM_ID = (1 << (63 - SEGMENT_BITS)) - 1
"""The largest item id a video may have: its segments' ids must stay int64."""
VIDEO_KEY = "video"
"""An item's metadata key for its video: duration_s, width, height, codec, container, and `segments`."""


@dataclass(frozen=True, order=True)
class SegmentSpan:
    """One moment of a video item: its position among the item's segments and its time span."""

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


def with_spans(extra: Mapping[str, Any], video: Mapping[str, Any], spans: Sequence[tuple[float, float]]
               ) -> dict[str, Any]:
    """An item's metadata with its video's record and its segments' spans."""
    return {**extra, VIDEO_KEY: {**video, "segments": [[round(start, 3), round(end, 3)] for start, end in spans]}}


def spans_of(extra: Mapping[str, Any]) -> list[tuple[float, float]]:
    """The time spans of a video item's segments, by position (none for other items)."""
    video = extra.get(VIDEO_KEY)
    segments = video.get("segments") if isinstance(video, Mapping) else None
    if not isinstance(segments, list):
        return []
    return [(float(span[0]), float(span[1])) for span in segments]


def span_of(extra: Mapping[str, Any], segment_id: int) -> SegmentSpan | None:
    """The span of one segment of the video item whose metadata is `extra`."""
    position = int(positions_of(np.array([segment_id]))[0])
    spans = spans_of(extra)
    return SegmentSpan(position, *spans[position]) if position < len(spans) else None

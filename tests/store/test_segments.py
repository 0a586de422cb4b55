"""Segment ids: a video's segments under ids of their own that name their item and position."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.store import segments


def test_segment_ids_name_their_item_and_position() -> None:
    ids = segments.segment_ids(7, 3)
    assert segments.items_of(ids).tolist() == [7, 7, 7]
    assert segments.positions_of(ids).tolist() == [0, 1, 2]
    largest = segments.segment_ids(segments.MAX_VIDEO_ITEM_ID, segments.MAX_SEGMENTS)
    assert largest.dtype == np.int64 and int(largest[-1]) == 2**63 - 1


def test_ids_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="id"):
        segments.segment_ids(segments.MAX_VIDEO_ITEM_ID + 1, 1)
    with pytest.raises(ValueError, match="segments"):
        segments.segment_ids(1, 0)


def test_the_segments_of_some_items_are_found_among_held_ids_and_counted_as_items() -> None:
    held = np.concatenate([segments.segment_ids(2, 3), segments.segment_ids(5, 2), segments.segment_ids(9, 1)])
    assert segments.of_items(np.array([5, 9, 11]), held).tolist() == held[3:].tolist()
    assert segments.count_items(held) == 3 and segments.count_items(np.zeros(0, np.int64)) == 0


def test_spans_are_kept_in_the_items_metadata_beside_the_rest() -> None:
    extra = segments.with_spans({"album": "x"}, {"duration_s": 4.0}, [(0.0, 1.5), (1.5, 4.0)])
    assert extra["album"] == "x" and extra["video"]["duration_s"] == 4.0
    assert segments.spans_of(extra) == [(0.0, 1.5), (1.5, 4.0)]
    assert segments.span_of(extra, int(segments.segment_ids(3, 2)[1])) == segments.SegmentSpan(1, 1.5, 4.0)
    assert segments.spans_of({"video": "not a record"}) == [] and segments.span_of({}, 0) is None

"""Snapshots of the live log: rows replayed in the order written, over an older snapshot."""

from __future__ import annotations

import json

import numpy as np

from clipsearch.modality import Modality
from clipsearch.store.live.state import LiveState, NewItem, members, replay, with_caption_vectors
from tests.support.reference import unit_vectors

DIM = 4


def item_row(item_id: int, generation: int, text: str = "t", caption: np.ndarray | None = None) -> tuple[object, ...]:
    vector = unit_vectors(1, DIM, seed=item_id)[0]
    return (item_id, "text", f"uri{item_id}", text, json.dumps({}), f"h{item_id}", vector.tobytes(), generation,
            None if caption is None else caption.astype(np.float32).tobytes())


def test_a_drop_after_a_write_removes_the_item_and_a_write_after_a_drop_restores_it() -> None:
    state = replay(None, 3, [], [item_row(1, 1), item_row(2, 3, "again")], [(1, 2), (2, 2)], DIM)
    assert list(state.segment(Modality.TEXT).ids) == [2] and state.items[2].text == "again"


def test_a_newer_snapshot_lays_the_rows_since_over_the_older_one() -> None:
    older = replay(None, 1, [(7, "image")], [item_row(1, 1)], [], DIM)
    newer = replay(older, 2, [(9, "image")], [item_row(2, 2)], [], DIM)
    assert list(newer.segment(Modality.TEXT).ids) == [1, 2]
    assert list(newer.removed_of(Modality.IMAGE)) == [7, 9] and newer.is_removed(9) and not newer.is_removed(8)
    np.testing.assert_array_equal(newer.segment(Modality.TEXT).vector(1), unit_vectors(1, DIM, seed=1)[0])
    assert newer.changes == 4


def test_an_empty_snapshot_has_empty_segments_of_the_right_width() -> None:
    state = replay(None, 0, [], [], [], DIM)
    assert state.segment(Modality.IMAGE).vectors.shape == (0, DIM)
    assert LiveState(generation=-1).segment(Modality.TEXT).ids.dtype == np.int64


def test_only_captioned_images_get_caption_vectors_in_one_call() -> None:
    vector = unit_vectors(1, DIM)[0]
    items = [NewItem("a", Modality.IMAGE, "a", "a cat", {}, "ha", vector),
             NewItem("b", Modality.IMAGE, "b", None, {}, "hb", vector),
             NewItem("c", Modality.TEXT, "c", "a text", {}, "hc", vector)]
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[np.ndarray]:
        calls.append(texts)
        return [np.full(DIM, 0.5, np.float32) for _ in texts]

    made = with_caption_vectors(items, embed)
    assert calls == [["a cat"]]
    assert made[0].caption_vector is not None and made[1].caption_vector is None and made[2].caption_vector is None


def test_members_finds_the_candidates_among_sorted_ids() -> None:
    assert members(np.array([5, 2, 9]), np.array([1, 2, 3, 9])).tolist() == [2, 9]
    assert members(np.array([5]), np.zeros(0, np.int64)).tolist() == []

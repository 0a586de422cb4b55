"""Snapshots of the live log: rows replayed in the order written, over an older snapshot."""

from __future__ import annotations

import json

import numpy as np

from clipsearch.modality import Modality
from clipsearch.store.live.state import LiveState, NewItem, members, replay, with_text_vectors
from tests.support.reference import unit_vectors

DIM = 4


def item_row(item_id: int, generation: int, text: str = "t", caption: np.ndarray | None = None,
             read: np.ndarray | None = None, modality: str = "text") -> tuple[object, ...]:
    vector = unit_vectors(1, DIM, seed=item_id)[0]
    return (item_id, modality, f"uri{item_id}", text, json.dumps({}), f"h{item_id}", vector.tobytes(), generation,
            *(None if texts is None else texts.astype(np.float32).tobytes() for texts in (caption, read)))


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


def test_only_images_and_videos_get_the_vectors_of_the_texts_they_have_in_one_call() -> None:
    vector = unit_vectors(1, DIM)[0]
    kept = np.full(DIM, 0.25, np.float32)
    read = {"ocr_text": "SALEONLY", "ocr": {"engine": "e", "lines": [{"text": "SALEONLY", "spaced": "SALE ONLY"}]}}
    items = [NewItem("a", Modality.IMAGE, "a", "a cat", read, "ha", vector),
             NewItem("b", Modality.IMAGE, "b", None, {}, "hb", vector),
             NewItem("c", Modality.TEXT, "c", "a text", read, "hc", vector),
             NewItem("d", Modality.IMAGE, "d", "kept", {}, "hd", vector, {"caption": kept}),
             NewItem("e", Modality.VIDEO, "e", "a film", {}, "he", vector[None])]
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[np.ndarray]:
        calls.append(texts)
        return [np.full(DIM, 0.5, np.float32) for _ in texts]

    made = with_text_vectors(items, ("caption", "ocr"), embed)
    assert calls == [["a cat", "SALE ONLY", "a film"]]  # the read text as its spaced lines say it
    assert set(made[0].text_vectors) == {"caption", "ocr"} and made[1].text_vectors == {} == made[2].text_vectors
    assert made[3].text_vectors["caption"] is kept  # a vector already held is not embedded again
    assert set(made[4].text_vectors) == {"caption"}
    assert with_text_vectors(items, ("caption",), embed)[0].text_vectors.keys() == {"caption"}


def test_a_write_replaces_every_text_vector_of_the_item_and_a_drop_removes_them() -> None:
    caption, read = unit_vectors(2, DIM, seed=40)
    first = replay(None, 1, [], [item_row(1, 1, caption=caption, read=read, modality="image")], [], DIM)
    assert set(first.segment(Modality.IMAGE).text_vectors(1)) == {"caption", "ocr"}
    second = replay(first, 2, [], [item_row(1, 2, read=read, modality="image"),
                                   item_row(2, 2, caption=caption, modality="image")], [], DIM)
    segment = second.segment(Modality.IMAGE)
    assert set(segment.text_vectors(1)) == {"ocr"} and set(segment.text_vectors(2)) == {"caption"}
    rows = segment.fused_rows(("caption", "ocr"))
    np.testing.assert_allclose(rows[0], np.concatenate([segment.vectors[0], segment.vectors[0], read]))
    np.testing.assert_allclose(rows[1], np.concatenate([segment.vectors[1], caption, segment.vectors[1]]))
    third = replay(second, 3, [], [], [(1, 3)], DIM).segment(Modality.IMAGE)
    assert third.text_vectors(1) == {} and set(third.texts) == {"caption"}


def test_members_finds_the_candidates_among_sorted_ids() -> None:
    assert members(np.array([5, 2, 9]), np.array([1, 2, 3, 9])).tolist() == [2, 9]
    assert members(np.array([5]), np.zeros(0, np.int64)).tolist() == []


def video_row(item_id: int, generation: int, segments: int, modality: str = "video",
              dim: int = DIM, caption: np.ndarray | None = None) -> tuple[object, ...]:
    """A live video's row (or a sound's, with `modality` 'audio'): its segments' vectors in one blob,
    their spans (one second each) in its metadata, and its caption's vector when given."""
    vectors = unit_vectors(segments, dim, seed=100 + item_id)
    extra = {modality: {"segments": [[float(second), float(second + 1)] for second in range(segments)]}}
    return (item_id, modality, f"uri{item_id}", None, json.dumps(extra), f"h{item_id}", vectors.tobytes(),
            generation, None if caption is None else caption.astype(np.float32).tobytes(), None)


def test_a_live_sounds_windows_are_rows_of_the_audio_models_size_beside_videos_of_the_image_models() -> None:
    from clipsearch.store.segments import segment_ids

    older = replay(None, 2, [], [video_row(5, 1, 2), video_row(7, 2, 3, "audio", dim=DIM + 3)], [], DIM)
    newer = replay(older, 3, [], [video_row(9, 3, 1, "audio", dim=DIM + 3)], [], DIM)
    sounds = newer.segment(Modality.AUDIO)
    assert sounds.ids.tolist() == [*segment_ids(7, 3), *segment_ids(9, 1)]
    assert sounds.vectors.shape == (4, DIM + 3) and newer.segment(Modality.VIDEO).vectors.shape == (2, DIM)
    np.testing.assert_array_equal(sounds.vectors[:3], unit_vectors(3, DIM + 3, seed=107))
    assert newer.changes == 3


def test_a_live_videos_segments_are_rows_of_their_own_and_a_newer_snapshot_keeps_them() -> None:
    from clipsearch.store.segments import segment_ids

    older = replay(None, 2, [], [video_row(5, 1, 3), video_row(8, 2, 2)], [], DIM)
    newer = replay(older, 4, [], [item_row(9, 3), video_row(12, 4, 1)], [(8, 4)], DIM)
    videos = newer.segment(Modality.VIDEO)
    assert videos.ids.tolist() == [*segment_ids(5, 3), *segment_ids(12, 1)]
    np.testing.assert_array_equal(videos.vectors[:3], unit_vectors(3, DIM, seed=105))
    np.testing.assert_array_equal(videos.vectors[3:], unit_vectors(1, DIM, seed=112))
    assert newer.changes == 3  # two videos and a text, whatever their segments


def test_a_live_videos_caption_is_on_each_of_its_segments_rows_and_a_newer_snapshot_keeps_it() -> None:
    from clipsearch.store.segments import segment_ids

    caption, other = unit_vectors(2, DIM, seed=60)
    older = replay(None, 2, [], [video_row(5, 1, 3, caption=caption), video_row(8, 2, 2)], [], DIM)
    newer = replay(older, 3, [], [video_row(12, 3, 1, caption=other)], [], DIM)
    videos = newer.segment(Modality.VIDEO)
    assert videos.ids.tolist() == [*segment_ids(5, 3), *segment_ids(8, 2), *segment_ids(12, 1)]
    assert set(videos.text_vectors(5)) == {"caption"} and videos.text_vectors(8) == {}
    np.testing.assert_array_equal(videos.text_vectors(12)["caption"], other)
    rows = videos.fused_rows(("caption",))
    for row in range(3):  # each segment of video 5 beside its caption; video 8's segments beside themselves
        np.testing.assert_array_equal(rows[row], np.concatenate([videos.vectors[row], caption]))
    np.testing.assert_array_equal(rows[3], np.concatenate([videos.vectors[3], videos.vectors[3]]))
    assert replay(newer, 4, [], [], [(5, 4)], DIM).segment(Modality.VIDEO).text_vectors(5) == {}

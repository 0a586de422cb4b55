"""From source items to batches: texts hashed, images read and prepared, duplicates marked, shards made."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.ingest.loading import (
    Outcome,
    image_batches,
    mark_duplicates,
    read_and_prepare,
    shard_of,
    text_batches,
)
from clipsearch.ingest.sources import SourceItem
from clipsearch.model.encoder import ClipEncoder
from clipsearch.util.files import sha256_hex
from tests.support.imagefiles import image_bytes, noise_image, save


def test_text_batches_start_where_asked_and_carry_the_text_and_its_hash() -> None:
    items = [SourceItem(f"texts.txt#{number}", text=f"text {number}") for number in range(5)]
    batches = list(text_batches(items, start=1, batch_size=3))
    assert [[outcome.position for outcome in batch.outcomes] for batch in batches] == [[1, 2, 3], [4]]
    first = batches[0].outcomes[0]
    assert first.payload == "text 1" and first.content_hash == sha256_hex(b"text 1")


def test_an_image_is_prepared_as_the_encoder_does_and_a_bad_one_is_skipped_with_its_reason(
        encoder: ClipEncoder, tmp_path: Path) -> None:
    good = save(tmp_path / "good.png", image_bytes(noise_image(1)))
    bad = save(tmp_path / "bad.png", b"not an image")
    prepared = read_and_prepare(0, SourceItem("good.png", good), encoder.prepare_image, encoder.image_size,
                                DEFAULT_MAX_PIXELS)
    assert prepared.problem is None and prepared.content_hash == sha256_hex(good.read_bytes())
    skipped = read_and_prepare(1, SourceItem("bad.png", bad), encoder.prepare_image, encoder.image_size,
                               DEFAULT_MAX_PIXELS)
    assert skipped.payload is None and skipped.problem and skipped.content_hash == sha256_hex(b"not an image")
    missing = read_and_prepare(2, SourceItem("gone.png", tmp_path / "gone.png"), encoder.prepare_image,
                               encoder.image_size, DEFAULT_MAX_PIXELS)
    assert missing.problem is not None and missing.problem.startswith("cannot read file")


def test_image_batches_stack_the_decoded_pixels_once_per_batch(encoder: ClipEncoder, tmp_path: Path) -> None:
    items = [SourceItem(f"{number}.png", save(tmp_path / f"{number}.png", image_bytes(noise_image(number))))
             for number in range(3)]
    items.insert(1, SourceItem("broken.png", save(tmp_path / "broken.png", b"broken")))
    [batch] = list(image_batches(items, encoder, start=0, batch_size=8, workers=0, max_pixels=DEFAULT_MAX_PIXELS))
    assert batch.pixels is not None and len(batch.pixels) == 3 == len(batch.decoded)
    assert [outcome.position for outcome in batch.decoded] == [0, 2, 3]
    np.testing.assert_array_equal(encoder.encode_images(batch.pixels)[0],
                                  encoder.encode_images([noise_image(0)])[0])


def test_a_repeated_content_is_a_duplicate_of_its_first_item_unless_duplicates_are_kept() -> None:
    def outcomes() -> list[Outcome]:
        return [Outcome(position, SourceItem(str(position)), content_hash=digest, payload=np.ones(2))
                for position, digest in enumerate(["a", "b", "a"])]

    marked, seen = outcomes(), {"b": 7}
    mark_duplicates(marked, seen, first_id=100, keep_duplicates=False)
    assert [outcome.duplicate_of for outcome in marked] == [None, 7, 100]
    assert marked[2].problem == "duplicate of item 100" and marked[2].payload is None
    kept = outcomes()
    mark_duplicates(kept, {}, first_id=100, keep_duplicates=True)
    assert all(outcome.problem is None for outcome in kept)


def test_a_shard_holds_the_vectors_of_the_encoded_and_the_records_of_all() -> None:
    vector = np.array([0.6, 0.8], np.float32)
    outcomes = [Outcome(0, SourceItem("a", text="a"), "ha", vector),
                Outcome(1, SourceItem("b"), "hb", problem="broken")]
    made = shard_of(outcomes, first_id=10, dim=2)
    assert list(made.ids) == [10] and made.vectors.tolist() == [vector.tolist()]
    assert [record["problem"] for record in made.records] == [None, "broken"]
    empty = shard_of(outcomes[1:], first_id=10, dim=2)
    assert empty.vectors.shape == (0, 2) and empty.vectors.dtype == np.float32


def test_short_videos_share_a_batch_of_frames_which_never_crosses_a_shard_and_each_gets_its_own_vectors(
        encoder: ClipEncoder, tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("av")
    from clipsearch.config import VideoSampling
    from clipsearch.ingest.loading import VideoPayload, encode_video, video_batches
    from clipsearch.util.video import read_video
    from tests.support.videos import SCENE_COLOURS, write_scenes

    paths = [write_scenes(tmp_path / f"{number}.mp4", [(SCENE_COLOURS[(number + scene) % 6], 1.0)
                                                       for scene in range(number % 3 + 1)]) for number in range(6)]
    items = [SourceItem(uri=str(path), path=path) for path in paths]
    batches = list(video_batches(items, encoder, 0, 0, VideoSampling(), frames_per_batch=4,
                                 starts_batch=lambda position: position % 4 == 0))
    # 1, 2, 3, 1, 2, 3 segments: videos gather until four frames, and position 4 starts a batch.
    assert [[outcome.position for outcome in batch.outcomes] for batch in batches] == [[0, 1, 2], [3], [4, 5]]
    for batch in batches:
        encode_video(encoder, batch, batch_size=3)
        for outcome in batch.outcomes:
            assert isinstance(outcome.payload, VideoPayload) and outcome.payload.pixels is None
            frames = [segment.frame for segment in read_video(paths[outcome.position]).segments]
            assert outcome.payload.vectors is not None
            np.testing.assert_allclose(outcome.payload.vectors, encoder.encode_images(frames), atol=1e-5)

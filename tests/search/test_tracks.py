"""Videos' sound tracks, written, edited and deleted with their videos through a collection's writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
from clipsearch.errors import InvalidQuery
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.writes import CollectionWriter, ImageEntry
from clipsearch.store.filters import parse_filter
from tests.support.corpora import tiny_config
from tests.support.sounds import TONES, write_sound
from tests.support.videos import SCENE_COLOURS, write_scenes

pytest.importorskip("av")
pytest.importorskip("transformers")


@pytest.fixture()
def video_sound_writer(encoder: ClipEncoder, tmp_path: Path) -> Iterator[CollectionWriter]:
    """A writer over a collection built from one video with a sound track, which indexes videos' sound tracks."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_scenes(videos / "built.mp4", [(SCENE_COLOURS[0], 2.0)], sound=[(TONES[0], 2.0)])
    build(tiny_config(tmp_path / "bundle", videos=videos,
                      sound=AudioSampling(model=OFFLINE_AUDIO_MODEL, video_sound=True)))
    with opened_service(encoder, tmp_path / "bundle") as opened:
        yield CollectionWriter(opened)


def _video(tmp_path: Path, name: str, sound: bool) -> bytes:
    return write_scenes(tmp_path / name, [(SCENE_COLOURS[1], 1.0), (SCENE_COLOURS[2], 1.0)],
                        sound=[(TONES[3], 2.0)] if sound else None).read_bytes()


def _track_of(writer: CollectionWriter, video_id: int) -> int | None:
    key = writer.live.key_of(video_id)
    assert key is not None
    return writer.tracks.id_of(key)


def test_a_written_videos_sound_track_is_written_edited_and_deleted_with_it(
        video_sound_writer: CollectionWriter, tmp_path: Path) -> None:
    writer, collection = video_sound_writer, video_sound_writer.service.collection
    [video_id] = writer.add_images([ImageEntry(_video(tmp_path, "a.mp4", sound=True), "clip", "a caption",
                                               {"album": "trip"})])
    track_id = _track_of(writer, video_id)
    assert track_id is not None and track_id != video_id
    video, track = collection.item(video_id), collection.item(track_id)
    assert track.modality is Modality.AUDIO and track.uri == video.uri and track.text == "a caption"
    assert track.content_hash == video.content_hash  # the same file: sync and dedup see them alike
    assert track.extra["album"] == "trip" and track.extra["audio"]["of_video"] is True
    [[start, end]] = track.extra["audio"]["segments"]  # one window: the 2 s track (AAC pads it to whole frames)
    assert start == 0.0 and end == pytest.approx(2.0, abs=0.025)

    writer.update(video_id, caption="another caption", metadata={"album": "home"})
    track = collection.item(track_id)
    assert track.text == "another caption" and track.extra["album"] == "home"
    assert track.extra["audio"]["segments"] == [[start, end]]  # its windows kept
    with pytest.raises(InvalidQuery, match="sound track of a video.*edit the video") as refused:
        writer.update(track_id, caption="only the track")
    assert refused.value.field == "item_id"

    # The same key, a silent video now: the video keeps its id, its old sound track goes in the same write.
    assert writer.add_images([ImageEntry(_video(tmp_path, "b.mp4", sound=False), "clip")]) == [video_id]
    assert _track_of(writer, video_id) is None
    [again] = writer.add_images([ImageEntry(_video(tmp_path, "c.mp4", sound=True), "clip")])
    track_id = _track_of(writer, again)
    assert track_id is not None
    assert sorted(writer.delete([again])) == sorted([again, track_id])
    assert collection.count(Modality.AUDIO) == 1  # the built video's track


def test_a_built_videos_sound_track_goes_with_it_when_a_filter_deletes_the_video(
        video_sound_writer: CollectionWriter) -> None:
    writer, collection = video_sound_writer, video_sound_writer.service.collection
    [built] = [item for item in collection.bundle.items if item.modality is Modality.VIDEO]
    [track] = [item for item in collection.bundle.items if item.modality is Modality.AUDIO]
    assert _track_of(writer, built.id) == track.id
    assert sorted(writer.delete_matching(parse_filter({"key": "modality", "match": {"value": "video"}}, "filter"))) == \
        sorted([built.id, track.id])
    assert collection.count(Modality.AUDIO) == 0


def test_a_videos_key_that_names_a_sound_file_item_is_refused_and_nothing_is_written(
        video_sound_writer: CollectionWriter, tmp_path: Path) -> None:
    writer = video_sound_writer
    sound = write_sound(tmp_path / "tone.wav", [(TONES[1], 2.0)]).read_bytes()
    writer.add_images([ImageEntry(sound, "shared")])
    before = writer.service.collection.refresh().generation
    with pytest.raises(InvalidQuery, match="names sound item .* give the video another key") as refused:
        writer.add_images([ImageEntry(_video(tmp_path, "a.mp4", sound=True), "shared")], "file")
    assert refused.value.field == "file[0].key" and writer.service.collection.refresh().generation == before
    # A silent video has no sound track to keep: its key may be the sound's.
    [video_id] = writer.add_images([ImageEntry(_video(tmp_path, "b.mp4", sound=False), "shared")])
    assert writer.service.collection.item(video_id).modality is Modality.VIDEO

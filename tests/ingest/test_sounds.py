"""Sounds in a build: a recording is one item after the images, texts and videos, its windows the
rows of the audio index, each the audio model's embedding of that stretch of the file; copies are
duplicates, unreadable files are reported, and a build stopped midway resumes to the same bundle.
Asked for, a video's sound track is a sound item of its own, after the sound files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
from clipsearch.errors import IndexSettingsInvalid
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.audio import load_audio_encoder
from clipsearch.store import segments
from clipsearch.store.bundle import load_bundle
from clipsearch.util.audio import read_audio
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config
from tests.support.sounds import TONES, sound_corpus, write_sound
from tests.support.videos import SCENE_COLOURS, write_scenes

pytest.importorskip("av")
pytest.importorskip("transformers")

TINY = AudioSampling(model=OFFLINE_AUDIO_MODEL)


def test_a_recording_is_one_item_whose_windows_are_the_rows_of_the_audio_index(tmp_path: Path) -> None:
    sounds = sound_corpus(tmp_path / "sounds")
    (sounds / "copy.bin").write_bytes((sounds / "rain.ogg").read_bytes())  # the same sound under another name
    (sounds / "cut.flac").write_bytes((sounds / "high.flac").read_bytes()[:60])
    (sounds / "notes.md").write_text("not a sound")  # recognised by content: left out, not reported
    summary = build(tiny_config(tmp_path / "out", audio=sounds, sound=TINY,
                                images=make_image_corpus(tmp_path / "images", 2),
                                texts=make_text_corpus(tmp_path / "texts.txt", 3)))
    assert summary.indexed == {"image": 2, "text": 3, "audio": 3} and summary.duplicates == 1
    assert [entry["uri"].rsplit("/", 1)[1] for entry in summary.report["skipped"]] == ["cut.flac"]
    audio = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")
    bundle = load_bundle(tmp_path / "out")
    try:
        sounds_found = sorted((item for item in bundle.items if item.modality is Modality.AUDIO),
                              key=lambda item: item.id)
        # After the images and the texts, by place in the listing: copy.bin (5, whose content rain.ogg repeats),
        # cut.flac (6, skipped), high.flac (7), rain.ogg (8, the duplicate), three.wav (9).
        assert [item.id for item in sounds_found] == [5, 7, 9]
        three = next(item for item in sounds_found if item.uri.endswith("three.wav"))
        spans = segments.spans_of(three.extra, Modality.AUDIO)
        assert spans[:3] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)] and spans[-1] == (26.0, 36.0)
        ids = segments.segment_ids(three.id, len(spans))
        clip = read_audio(sounds / "three.wav", audio.sampling_rate)
        expected = audio.encode_audio([clip.excerpt(start, end) for start, end in spans])
        np.testing.assert_allclose(bundle.base_vectors(Modality.AUDIO, ids), expected, atol=1e-5)
        high = next(item for item in sounds_found if item.uri.endswith("high.flac"))
        assert high.text == "a high whistle" and high.extra["audio"]["channels"] == 2
        assert bundle.manifest.dim_of(Modality.AUDIO) == audio.embedding_dim
    finally:
        bundle.close()


def test_a_build_stopped_midway_resumes_to_the_same_sounds(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for number in range(5):
        write_sound(sounds / f"tone_{number}.wav", [(TONES[number], 3.0 + number)])
    config = tiny_config(tmp_path / "out", audio=sounds, sound=TINY, batch_size=2, batches_per_shard=1)
    written: list[Path] = []

    def stop_after_two(path: Path) -> None:
        written.append(path)
        if len(written) == 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        build(config, on_shard_written=stop_after_two)
    resumed = build(config)
    assert resumed.resumed_shards == 2 and resumed.indexed == {"audio": 5}
    build(tiny_config(tmp_path / "whole", audio=sounds, sound=TINY, batch_size=2, batches_per_shard=1))
    first, whole = load_bundle(tmp_path / "out"), load_bundle(tmp_path / "whole")
    try:
        ids = whole.base_ids(Modality.AUDIO)
        assert first.base_ids(Modality.AUDIO).tolist() == ids.tolist()
        np.testing.assert_array_equal(first.base_vectors(Modality.AUDIO, ids), whole.base_vectors(Modality.AUDIO, ids))
    finally:
        first.close()
        whole.close()


def test_sounds_are_embedded_by_the_local_engine_only(tmp_path: Path) -> None:
    with pytest.raises(IndexSettingsInvalid, match="leave out --engine ray"):
        build(tiny_config(tmp_path / "out", audio=sound_corpus(tmp_path / "sounds"), sound=TINY, engine="ray"))


def test_a_videos_sound_track_is_a_sound_item_of_its_own_and_a_silent_video_has_none(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    # A 220 Hz tone 0–4 s, then a 1760 Hz one, under the four scenes; a second video with no sound track.
    write_scenes(videos / "talk.mp4", [(colour, 2.0) for colour in SCENE_COLOURS[:4]],
                 sound=[(TONES[0], 4.0), (TONES[3], 4.0)])
    write_scenes(videos / "quiet.webm", [(colour, 1.5) for colour in SCENE_COLOURS[:2]], codec="libvpx-vp9")
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    write_sound(sounds / "hum.wav", [(TONES[1], 3.0)])
    summary = build(tiny_config(tmp_path / "out", videos=videos, audio=sounds, sound=replace(TINY, video_sound=True)))
    assert summary.indexed == {"video": 2, "audio": 2} and summary.skipped == 0 and summary.duplicates == 0
    assert summary.describe().startswith("indexed 2 videos, 2 sounds; skipped 0")
    bundle = load_bundle(tmp_path / "out")
    try:
        by_uri = {(item.modality, Path(item.uri).name): item for item in bundle.items}
        video, track = by_uri[Modality.VIDEO, "talk.mp4"], by_uri[Modality.AUDIO, "talk.mp4"]
        assert (Modality.AUDIO, "quiet.webm") not in by_uri and (Modality.AUDIO, "hum.wav") in by_uri
        # After the sound files: hum.wav is 2, then talk.mp4's sound track (quiet.webm's place, 3, is empty).
        assert by_uri[Modality.AUDIO, "hum.wav"].id == 2 and track.id == 4 and video.id == 1
        assert track.uri == video.uri and track.content_hash == video.content_hash
        assert segments.is_sound_of_video(track.extra) and not segments.is_sound_of_video(video.extra)
        assert track.extra["audio"]["container"] == "mp4" and track.extra["audio"]["codec"] == "aac"
        spans = segments.spans_of(track.extra, Modality.AUDIO)
        assert spans == [(0.0, 8.0)]  # shorter than the tiny model's 10 s window: one window
        audio = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")
        clip = read_audio(videos / "talk.mp4", audio.sampling_rate, of_video=True)
        np.testing.assert_allclose(bundle.base_vectors(Modality.AUDIO, segments.segment_ids(track.id, 1)),
                                   audio.encode_audio([clip.excerpt(0.0, 8.0)]), atol=1e-5)
        assert bundle.manifest.audio is not None and bundle.manifest.audio["video_sound"] is True
    finally:
        bundle.close()


def test_videos_sound_tracks_are_left_out_unless_asked_for(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    write_scenes(videos / "talk.mp4", [(SCENE_COLOURS[0], 2.0)], sound=[(TONES[0], 2.0)])
    summary = build(tiny_config(tmp_path / "out", videos=videos, sound=TINY))
    assert summary.indexed == {"video": 1}
    only_tracks = build(tiny_config(tmp_path / "tracks", videos=videos, sound=replace(TINY, video_sound=True)))
    assert only_tracks.indexed == {"video": 1, "audio": 1}

"""Reading sounds: WAV, FLAC, MP3, Ogg and M4A decoded to mono samples at the model's rate, cut into
overlapping windows that cover the whole; and every bad file refused with its reason, within the bounds."""

from __future__ import annotations

import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clipsearch.config import AudioSampling
from clipsearch.errors import AudioDecodeError, AudioTooLarge, NoSoundTrack
from clipsearch.util.audio import audio_media_type, looks_like_audio, read_audio, window_spans
from clipsearch.util.media import MEDIA_HEAD_BYTES
from tests.support.sounds import NOISE, TONES, samples_of, three_parts, write_sound
from tests.support.videos import SCENE_COLOURS, four_scenes, write_scenes

pytest.importorskip("av")

SAMPLING = AudioSampling()
RATE = 48_000


@pytest.mark.parametrize(("kind", "rate", "channels"), [("wav", 48_000, 1), ("flac", 44_100, 2), ("mp3", 44_100, 2),
                                                        ("ogg", 48_000, 1), ("m4a", 44_100, 2),
                                                        ("webm", 48_000, 1)])
def test_every_format_is_read_as_mono_samples_at_the_models_rate(
        tmp_path: Path, kind: str, rate: int, channels: int) -> None:
    path = write_sound(tmp_path / f"tone.{kind}", [(TONES[1], 3.0)], rate=rate, channels=channels, kind=kind)
    assert looks_like_audio(path.read_bytes()[:MEDIA_HEAD_BYTES])
    clip = read_audio(path, RATE)
    assert clip.sample_rate == RATE and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.duration_s == pytest.approx(3.0, abs=0.06)  # MP3 and Opus pad their first and last frames
    assert clip.record() == {"duration_s": pytest.approx(3.0, abs=0.06), "sample_rate": rate, "channels": channels,
                             "codec": {"wav": "pcm_s16le", "flac": "flac", "mp3": "mp3float", "ogg": "opus",
                                       "m4a": "aac", "webm": "opus"}[kind],
                             "container": kind}
    # The 440 Hz tone survives the resampling: its strongest frequency is still 440 Hz.
    spectrum = np.abs(np.fft.rfft(clip.samples[RATE // 2:RATE // 2 + RATE]))
    assert int(np.argmax(spectrum)) == pytest.approx(440, abs=2)


def test_lossless_samples_come_back_as_written(tmp_path: Path) -> None:
    path = write_sound(tmp_path / "noise.flac", [(NOISE, 2.0)], kind="flac", seed=3)
    clip = read_audio(path, RATE)
    np.testing.assert_allclose(clip.samples, samples_of([(NOISE, 2.0)], RATE, seed=3), atol=1 / 32_000)


@pytest.mark.parametrize(("duration", "spans"), [
    (36.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0), (20.0, 30.0), (25.0, 35.0), (26.0, 36.0)]),
    (35.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0), (20.0, 30.0), (25.0, 35.0)]),
    (10.0, [(0.0, 10.0)]),
    (3.5, [(0.0, 3.5)]),
    (0.02, [(0.0, 0.02)]),
])
def test_windows_overlap_by_the_hop_and_the_last_one_ends_at_the_end(
        duration: float, spans: list[tuple[float, float]]) -> None:
    assert window_spans(duration, 10.0, 5.0) == spans


@settings(deadline=None)
@given(duration=st.floats(0.01, 600), window=st.floats(0.5, 30), hop_share=st.floats(0.1, 1.0))
@example(duration=14.0, window=2.734375, hop_share=1.0)  # abutting windows once left a millisecond between them
def test_windows_cover_the_whole_recording_in_order_none_longer_than_the_model_reads(
        duration: float, window: float, hop_share: float) -> None:
    spans = window_spans(duration, window, window * hop_share)
    # Spans are kept to the millisecond: that is the precision of every comparison here.
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(duration, abs=1e-3)
    assert all(end - start <= window + 1e-3 for start, end in spans)
    assert all(earlier[0] < later[0] <= earlier[1] + 1e-3 for earlier, later in pairwise(spans))


def test_an_excerpt_is_the_samples_of_its_span(tmp_path: Path) -> None:
    clip = read_audio(three_parts(tmp_path / "three.wav"), RATE)
    whole = samples_of([(TONES[0], 12.0), (NOISE, 12.0), (TONES[3], 12.0)], RATE)
    np.testing.assert_allclose(clip.excerpt(10.0, 20.0), whole[10 * RATE:20 * RATE], atol=1 / 32_000)


@pytest.mark.parametrize(("data", "reason"), [(b"", "empty"), (b"RIFF\x00\x00\x00\x00WAVEjunk", "readable"),
                                              (b"hello, world" * 10, "readable"),
                                              (b"fLaC" + bytes(100), "readable")])
def test_what_is_not_a_sound_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(AudioDecodeError, match=reason):
        read_audio(data, RATE)


def test_a_video_is_not_taken_for_a_sound_file_and_without_a_sound_track_has_none_to_read(tmp_path: Path) -> None:
    video = four_scenes(tmp_path / "four.mp4").read_bytes()
    assert not looks_like_audio(video[:16])
    with pytest.raises(AudioDecodeError, match="holds no audio stream"):
        read_audio(video, RATE)
    webm = four_scenes(tmp_path / "four.webm", codec="libvpx-vp9", container="webm").read_bytes()
    assert not looks_like_audio(webm[:MEDIA_HEAD_BYTES])
    with pytest.raises(AudioDecodeError, match="holds no audio stream"):
        read_audio(webm, RATE)
    with pytest.raises(AudioDecodeError, match="not a sound format accepted here"):
        read_audio(four_scenes(tmp_path / "four.avi", container="avi"), RATE)


@pytest.mark.parametrize(("name", "codec", "container"), [("talk.mp4", "libx264", "mp4"),
                                                          ("talk.webm", "libvpx-vp9", "matroska"),
                                                          ("talk.mkv", "libx264", "matroska")])
def test_a_videos_sound_track_is_read_as_its_samples_with_the_videos_container(
        tmp_path: Path, name: str, codec: str, container: str) -> None:
    parts = [(TONES[0], 2.0), (TONES[3], 2.0)]
    video = write_scenes(tmp_path / name, [(colour, 2.0) for colour in SCENE_COLOURS[:2]], codec=codec, sound=parts)
    track = read_audio(video, RATE, of_video=True)
    assert track.container == container and track.channels == 1
    assert track.duration_s == pytest.approx(4.0, abs=0.03)  # AAC and Opus pad to whole frames
    # Lossy, so compared by where the energy is: the low tone's band in the first half, the high one's after.
    written = samples_of(parts, RATE)
    for half in (slice(0, 2 * RATE), slice(2 * RATE, 4 * RATE)):
        read_spectrum = np.abs(np.fft.rfft(track.samples[half]))
        assert np.argmax(read_spectrum) == np.argmax(np.abs(np.fft.rfft(written[half])))


def test_a_silent_video_has_no_sound_track_which_is_said_apart_from_a_broken_one(tmp_path: Path) -> None:
    with pytest.raises(NoSoundTrack, match="holds no audio stream"):
        read_audio(four_scenes(tmp_path / "four.mp4"), RATE, of_video=True)
    with pytest.raises(AudioDecodeError, match="not a video format accepted here") as refused:
        read_audio(write_sound(tmp_path / "tone.wav", [(TONES[1], 1.0)]), RATE, of_video=True)
    assert not isinstance(refused.value, NoSoundTrack)


def test_an_m4a_is_a_sound_not_a_video(tmp_path: Path) -> None:
    from clipsearch.util.video import looks_like_video

    head = write_sound(tmp_path / "memo.m4a", [(TONES[1], 1.0)], kind="m4a").read_bytes()[:16]
    assert looks_like_audio(head) and not looks_like_video(head)


def test_a_sound_only_webm_is_a_sound_not_a_video(tmp_path: Path) -> None:
    from clipsearch.util.video import looks_like_video

    head = write_sound(tmp_path / "recorded.webm", [(TONES[1], 1.0)], kind="webm").read_bytes()[:MEDIA_HEAD_BYTES]
    assert looks_like_audio(head) and not looks_like_video(head)
    assert not looks_like_audio(head[:16]) and looks_like_video(head[:16])  # its tracks unseen: a video, as before


def test_a_truncated_file_gives_the_sound_before_the_cut(tmp_path: Path) -> None:
    whole = write_sound(tmp_path / "tone.mp3", [(TONES[2], 6.0)], kind="mp3").read_bytes()
    start = read_audio(whole[:len(whole) // 2], RATE)
    assert 1.0 < start.duration_s < 4.5


def test_the_bounds_refuse_a_long_recording_before_decoding_and_a_slow_one_while_decoding(tmp_path: Path) -> None:
    path = write_sound(tmp_path / "long.flac", [(TONES[0], 8.0)], kind="flac")
    with pytest.raises(AudioTooLarge, match="8 s long, over the limit of 5 s"):
        read_audio(path, RATE, replace(SAMPLING, max_seconds=5))
    started = time.monotonic()
    with pytest.raises(AudioTooLarge, match="took over"):
        read_audio(path, RATE, replace(SAMPLING, decode_timeout_s=1e-9))
    assert time.monotonic() - started < 5


def test_a_stream_that_declares_no_length_is_stopped_at_the_limit_while_decoding(tmp_path: Path) -> None:
    # A raw MP3 with no header giving its length: the bound is met while its frames are decoded.
    path = write_sound(tmp_path / "long.mp3", [(TONES[0], 8.0)], kind="mp3")
    data = path.read_bytes()
    frames = data[data.index(b"\xff\xfb"):] if b"\xff\xfb" in data else data
    with pytest.raises(AudioTooLarge, match="limit of 5 s"):
        read_audio(frames, RATE, replace(SAMPLING, max_seconds=5))


def test_files_are_recognised_by_content_not_name() -> None:
    assert looks_like_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    assert looks_like_audio(b"fLaC\x00\x00\x00\x22") and looks_like_audio(b"OggS\x00\x02")
    assert looks_like_audio(b"ID3\x04\x00") and looks_like_audio(b"\xff\xfb\x90\x00")
    assert not looks_like_audio(b"RIFF\x00\x00\x00\x00AVI LIST")
    assert not looks_like_audio(b"\x89PNG\r\n\x1a\n\x00\x00\x00\r") and not looks_like_audio(b"\xff\xd8\xff\xe0")


def test_each_format_is_served_as_its_media_type() -> None:
    assert [audio_media_type(name) for name in ("wav", "flac", "mp3", "ogg", "m4a", "aiff")] == \
        ["audio/wav", "audio/flac", "audio/mpeg", "audio/ogg", "audio/mp4", "application/octet-stream"]


@pytest.fixture(scope="module", params=["mp3", "ogg", "flac"])
def small_sound(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A path, not the bytes: a failing example's report prints its arguments."""
    return write_sound(tmp_path_factory.mktemp("fuzz") / f"tone.{request.param}", [(TONES[1], 2.0), (NOISE, 1.0)],
                       kind=request.param)


# A damaged MP3 frame that declared other channels once crashed the resampler (a ValueError): now the
# stream is read on with a new resampler.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 20_000), flips=st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 255)),
                                                  max_size=8))
def test_a_cut_or_corrupted_sound_is_read_or_refused_with_a_reason_never_anything_else(
        small_sound: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    whole = small_sound.read_bytes()
    data = bytearray(whole[:max(1, len(whole) - cut)])
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    started = time.monotonic()
    try:
        clip = read_audio(bytes(data), RATE, replace(SAMPLING, decode_timeout_s=10, max_seconds=60))
    except AudioDecodeError as error:
        assert error.reason
    else:
        assert len(clip.samples) > 0 and np.isfinite(clip.samples).all()
    assert time.monotonic() - started < 15


def test_without_pyav_a_sound_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # an import of it now fails, as when it is not installed
    with pytest.raises(AudioDecodeError, match=r"pip install 'clipsearch\[audio\]'"):
        read_audio(b"RIFF\x00\x00\x00\x00WAVE", RATE)

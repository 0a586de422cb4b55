"""Reading videos: segments cut at the scene changes, at least one every max_gap_s, at most
max_segments; and every bad file refused with its reason, within the bounds."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsearch.config import VideoSampling
from clipsearch.errors import VideoDecodeError, VideoTooLarge
from clipsearch.util.video import frame_at, looks_like_video, read_video, video_media_type
from tests.support.videos import SCENE_COLOURS, four_scenes, turned_a_quarter, two_halves, write_scenes

pytest.importorskip("av")

SAMPLING = VideoSampling()
FOUR = [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]


def _spans(path: Path, sampling: VideoSampling = SAMPLING) -> list[tuple[float, float]]:
    return [(segment.start_s, segment.end_s) for segment in read_video(path, sampling).segments]


@pytest.mark.parametrize(("codec", "container", "suffix"), [("libx264", "mp4", ".mp4"), ("libx264", "mov", ".mov"),
                                                            ("libvpx-vp9", "webm", ".webm"),
                                                            ("libx264", "matroska", ".mkv"),
                                                            ("mpeg4", "avi", ".avi")])
def test_scenes_that_change_at_known_times_are_cut_there_in_every_container(
        tmp_path: Path, codec: str, container: str, suffix: str) -> None:
    path = four_scenes(tmp_path / f"four{suffix}", codec=codec, container=container, static=False)
    assert looks_like_video(path.read_bytes()[:16])
    assert _spans(path) == FOUR


def test_each_segment_keeps_its_first_frame_scaled_down(tmp_path: Path) -> None:
    video = read_video(four_scenes(tmp_path / "four.mp4"))
    for segment, colour in zip(video.segments, SCENE_COLOURS, strict=False):
        assert segment.frame.size == (96, 64)
        red, green, blue = segment.frame.getpixel((90, 60))
        assert abs(red - colour[0]) < 24 and abs(green - colour[1]) < 24 and abs(blue - colour[2]) < 24
    assert video.record() == {"duration_s": 8.0, "width": 96, "height": 64, "codec": "h264", "container": "mp4"}


def test_a_long_shot_still_gets_a_segment_every_max_gap_s(tmp_path: Path) -> None:
    path = write_scenes(tmp_path / "long.mp4", [(SCENE_COLOURS[0], 7.0)], fps=4)
    assert _spans(path, replace(SAMPLING, max_gap_s=3.0)) == [(0.0, 3.0), (3.0, 6.0), (6.0, 7.0)]


def test_past_max_segments_the_least_distinct_neighbours_are_merged(tmp_path: Path) -> None:
    # Two near-identical scenes (0–2 s, 2–4 s) and two distinct ones: with a cap of three, the weak cut goes.
    near = tuple(min(255, value + 40) for value in SCENE_COLOURS[0])
    path = write_scenes(tmp_path / "cap.mp4", [(SCENE_COLOURS[0], 2.0), (near, 2.0), (SCENE_COLOURS[2], 2.0),
                                               (SCENE_COLOURS[3], 2.0)])
    assert _spans(path, replace(SAMPLING, scene_threshold=0.05)) == FOUR
    assert _spans(path, replace(SAMPLING, scene_threshold=0.05, max_segments=3)) == [(0.0, 4.0), (4.0, 6.0),
                                                                                      (6.0, 8.0)]


def test_a_video_whose_scenes_are_all_one_frame_is_handled(tmp_path: Path) -> None:
    path = write_scenes(tmp_path / "flicker.mp4", [(SCENE_COLOURS[number % 4], 0.1) for number in range(12)], fps=10)
    spans = _spans(path)
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(1.2)
    assert all(end > start for start, end in spans)
    assert [span[1] for span in spans[:-1]] == [span[0] for span in spans[1:]]  # no gap, no overlap
    single = write_scenes(tmp_path / "one.mp4", [(SCENE_COLOURS[1], 0.1)], fps=10)
    assert _spans(single) == [(0.0, 0.1)]


def test_bytes_read_as_the_file_is(tmp_path: Path) -> None:
    path = four_scenes(tmp_path / "four.webm", codec="libvpx-vp9", container="webm")
    assert [(segment.start_s, segment.end_s) for segment in read_video(path.read_bytes()).segments] == FOUR


def test_a_frame_at_a_time_is_the_one_shown_then(tmp_path: Path) -> None:
    path = four_scenes(tmp_path / "four.mp4")
    red, _green, blue = frame_at(path, 5.3).getpixel((90, 60))
    assert blue > 150 and red < 80
    assert video_media_type(path) == "video/mp4"
    webm = four_scenes(tmp_path / "four.webm", codec="libvpx-vp9", container="webm")
    matroska = four_scenes(tmp_path / "four.mkv", container="matroska")
    assert (video_media_type(webm), video_media_type(matroska)) == ("video/webm", "video/x-matroska")
    # The family an item recorded gives the same type without a probe.
    recorded = {file: read_video(file).container for file in (path, webm, matroska)}
    assert [video_media_type(file, recorded[file]) for file in (path, webm, matroska)] == \
        ["video/mp4", "video/webm", "video/x-matroska"]


def test_a_phones_portrait_video_stored_on_its_side_is_read_upright_and_recorded_as_shown(tmp_path: Path) -> None:
    # Stored 96×64, red on the left; shown turned a quarter clockwise: 64×96, red on top.
    video = read_video(turned_a_quarter(two_halves(tmp_path / "portrait.mp4")))
    assert (video.width, video.height) == (64, 96)
    for picture in (video.segments[0].frame, frame_at(tmp_path / "portrait.mp4", 0.5)):
        assert picture.size == (64, 96)
        top, bottom = picture.getpixel((32, 10)), picture.getpixel((32, 85))
        assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    stored = read_video(two_halves(tmp_path / "landscape.mp4"))
    assert (stored.width, stored.height) == (96, 64) and stored.segments[0].frame.size == (96, 64)


def test_a_truncated_file_gives_the_frames_before_the_cut_or_a_reason(tmp_path: Path) -> None:
    whole = four_scenes(tmp_path / "four.mkv", container="matroska").read_bytes()
    start = read_video(whole[:len(whole) * 3 // 5])
    assert 0 < start.duration_s < 8.0
    with pytest.raises(VideoDecodeError, match="not a readable video"):
        read_video(four_scenes(tmp_path / "four.mp4").read_bytes()[:700])


@pytest.mark.parametrize(("data", "reason"), [(b"", "empty"), (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 50, "readable"),
                                              (b"hello, world" * 10, "readable")])
def test_what_is_not_a_video_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(VideoDecodeError, match=reason):
        read_video(data)


def test_an_image_or_a_sound_is_not_a_video(tmp_path: Path) -> None:
    import av
    import numpy as np

    sound = tmp_path / "tone.mka"
    with av.open(str(sound), mode="w", format="matroska") as output:
        stream = output.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.sin(np.arange(8000) / 5) * 3000).astype(np.int16)[None], format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            output.mux(packet)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        read_video(sound)


def test_the_bounds_refuse_a_huge_frame_a_long_video_and_a_slow_one_before_or_while_decoding(tmp_path: Path) -> None:
    path = four_scenes(tmp_path / "four.mp4")
    with pytest.raises(VideoTooLarge, match="96x64 pixels, over the limit of 1000"):
        read_video(path, replace(SAMPLING, max_pixels=1000))
    with pytest.raises(VideoTooLarge, match="8 s long, over the limit of 5 s"):
        read_video(path, replace(SAMPLING, max_seconds=5))
    started = time.monotonic()
    with pytest.raises(VideoTooLarge, match="took over"):
        read_video(path, replace(SAMPLING, decode_timeout_s=1e-9))
    assert time.monotonic() - started < 5


def test_a_stream_that_runs_past_the_limit_without_declaring_its_length_is_stopped_there(tmp_path: Path) -> None:
    # A Matroska file written as a live stream declares no duration: the limit is met while decoding.
    path = four_scenes(tmp_path / "live.mkv", container="matroska")
    with pytest.raises(VideoTooLarge, match="limit of 3 s"):
        read_video(path.read_bytes(), replace(SAMPLING, max_seconds=3))


def test_files_are_recognised_by_content_not_name() -> None:
    assert looks_like_video(b"\x1aE\xdf\xa3\x01\x00\x00\x00\x00\x00\x00\x1f")
    assert looks_like_video(b"RIFF\x00\x00\x00\x00AVI LIST")
    assert not looks_like_video(b"\x00\x00\x00\x1cftypavif\x00\x00")  # an AVIF picture
    assert not looks_like_video(b"\x89PNG\r\n\x1a\n\x00\x00\x00\r")


def test_a_small_file_of_huge_frames_is_refused_from_its_header_before_a_frame_is_decoded(tmp_path: Path) -> None:
    # 126 KB that would decode to 42 million pixels a frame: a decompression bomb in a container.
    bomb = write_scenes(tmp_path / "bomb.mp4", [((10, 20, 30), 0.1)], width=9216, height=4608)
    assert bomb.stat().st_size < 1_000_000
    started = time.monotonic()
    with pytest.raises(VideoTooLarge, match="9216x4608 pixels"):
        read_video(bomb.read_bytes())
    assert time.monotonic() - started < 2


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return four_scenes(tmp_path_factory.mktemp("fuzz") / "four.mp4", fps=5).read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                                  max_size=8))
def test_a_cut_or_corrupted_video_is_read_or_refused_with_a_reason_never_anything_else(
        small_video: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(small_video[:max(1, len(small_video) - cut)])
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    started = time.monotonic()
    try:
        video = read_video(bytes(data), replace(SAMPLING, decode_timeout_s=10))
    except VideoDecodeError as error:
        assert error.reason
    else:
        assert video.segments and all(segment.end_s >= segment.start_s for segment in video.segments)
        assert [segment.start_s for segment in video.segments] == sorted(segment.start_s for segment in video.segments)
    assert time.monotonic() - started < 15


def test_a_codec_this_build_cannot_decode_and_a_stream_without_frames_are_refused_with_reasons(
        tmp_path: Path) -> None:
    import av

    data = bytearray(four_scenes(tmp_path / "four.avi", codec="mpeg4", container="avi").read_bytes())
    for tag in (b"FMP4", b"fmp4"):  # the fourcc names a codec no FFmpeg knows
        data = data.replace(tag, b"ZZZZ")
    with pytest.raises(VideoDecodeError, match="cannot be decoded by this build"):
        read_video(bytes(data))
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as output:
        stream = output.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    with pytest.raises(VideoDecodeError, match="not a readable video|no frame"):
        read_video(empty)

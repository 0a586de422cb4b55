"""Opening a media file: what FFmpeg cannot open becomes the caller's error with a short reason, and a
timeout that FFmpeg reports as an error of its own reads as the caller's time bound."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from clipsearch.errors import AudioTooLarge, VideoDecodeError
from clipsearch.util.media import open_media
from tests.support.videos import write_scenes


def never_late() -> None:
    pass


def test_an_empty_file_is_refused_as_empty() -> None:
    with pytest.raises(VideoDecodeError, match=r"empty file \(0 bytes\)"):
        open_media(av, b"", 5.0, "video", VideoDecodeError, never_late)


def test_bytes_ffmpeg_cannot_read_are_refused_naming_what_they_should_have_been() -> None:
    with pytest.raises(VideoDecodeError, match=r"^not a readable video \(.+\)$"):
        open_media(av, b"\x00" * 4096, 5.0, "video", VideoDecodeError, never_late)


def test_when_ffmpeg_fails_past_the_deadline_the_time_bound_is_what_is_said() -> None:
    def late() -> None:
        raise AudioTooLarge("reading the recording took over 5 s; refused")

    with pytest.raises(AudioTooLarge, match="took over 5 s"):
        open_media(av, b"\x00" * 4096, 5.0, "sound file", VideoDecodeError, late)


def test_a_readable_file_opens_from_its_path_or_its_bytes(tmp_path: Path) -> None:
    path = write_scenes(tmp_path / "clip.mp4", [((200, 30, 30), 1.0)])
    for source in (path, path.read_bytes()):
        with open_media(av, source, 5.0, "video", VideoDecodeError, never_late) as container:
            assert container.streams.video

"""Opening a media file: what FFmpeg cannot open becomes the caller's error with a short reason, and a
timeout that FFmpeg reports as an error of its own reads as the caller's time bound. Telling a
Matroska file's sound from a video by its track list."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipsearch.errors import AudioTooLarge, VideoDecodeError
from clipsearch.util.media import EBML_MAGIC, is_matroska_sound, matroska_track_kinds, open_media
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


def ebml(element: bytes, *children: bytes) -> bytes:
    """An EBML element: its id, its size (8 bytes long), its children."""
    body = b"".join(children)
    return element + (0x01 << 56 | len(body)).to_bytes(8, "big") + body


def track(kind: int) -> bytes:
    return ebml(b"\xae", ebml(b"\xd7", b"\x01"), ebml(b"\x83", bytes([kind])))  # TrackNumber, TrackType


def matroska(*tracks: bytes) -> bytes:
    seek_head = ebml(b"\x11\x4d\x9b\x74", ebml(b"\x4d\xbb", ebml(b"\x53\xab", b"\x16\x54\xae\x6b")))
    return EBML_MAGIC + b"\x9f" + b"\x00" * 31 + ebml(b"\x18\x53\x80\x67", seek_head,
                                                        ebml(b"\x16\x54\xae\x6b", *tracks))


def test_a_matroska_files_track_list_says_whether_it_holds_pictures_or_only_sound() -> None:
    assert matroska_track_kinds(matroska(track(2))) == {"audio"} and is_matroska_sound(matroska(track(2)))
    assert matroska_track_kinds(matroska(track(1), track(2))) == {"video", "audio"}
    assert not is_matroska_sound(matroska(track(1), track(2)))  # a video with its sound track


def test_a_head_without_the_track_list_or_not_matroska_says_nothing() -> None:
    whole = matroska(track(2))
    assert matroska_track_kinds(whole[:60]) is None  # cut before the tracks: unknown, taken for a video
    assert matroska_track_kinds(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert matroska_track_kinds(EBML_MAGIC + b"\xff" * 64) is None  # nothing readable: no answer, no error


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=512), cut=st.integers(0, 600))
def test_any_bytes_after_the_magic_give_an_answer_and_never_an_error(body: bytes, cut: int) -> None:
    """The track list is read from untrusted uploads: damaged sizes, ids and cuts end the reading."""
    for head in (EBML_MAGIC + body, (matroska(track(2)) + body)[:cut], matroska(track(1), track(2))[:cut] + body):
        kinds = matroska_track_kinds(head)
        assert kinds is None or kinds <= {"video", "audio", "subtitle", "other"}

"""Untrusted media files, for clipsearch.util.video and clipsearch.util.audio: opening one with PyAV
(what FFmpeg raises becomes the caller's own error, with a short reason), and telling a Matroska or
WebM file's sound from a video by the track list in its first bytes, before anything is decoded."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def open_media(av: Any, source: Path | bytes, timeout_s: float, what: str, error: Callable[[str], Exception],
               check_time: Callable[[], None]) -> Any:
    """The container in `source` (a path, or the file's bytes), open for reading. A file that cannot
    be opened raises `error(reason)`, the reason naming `what` it should have been. When FFmpeg
    fails, `check_time` runs first: FFmpeg's own timeout interrupts it with an error of its own,
    which should read as the time bound it is."""
    if isinstance(source, bytes) and not source:
        raise error("empty file (0 bytes)")
    file: IO[bytes] | str = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        return av.open(file, mode="r", timeout=timeout_s)
    except av.error.FFmpegError as failure:
        check_time()
        raise error(f"not a readable {what} ({failure_reason(failure)})") from None
    except (OSError, ValueError) as failure:
        raise error(f"cannot open the file: {failure}") from None


def failure_reason(error: Exception) -> str:
    """FFmpeg's own words for an error (its strerror), without PyAV's wrapping."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


EBML_MAGIC = b"\x1a\x45\xdf\xa3"
"""The first bytes of an EBML file: Matroska and WebM, videos or sounds alike."""
MEDIA_HEAD_BYTES = 64 * 1024
"""How much of a file's start recognising it reads: enough for a Matroska file's track list, which
muxers (FFmpeg's, browsers' MediaRecorder) write before the first frame."""
_TRACKS, _TRACK_ENTRY, _TRACK_TYPE = b"\x16\x54\xae\x6b", 0xAE, 0x83
_TRACK_KINDS = {1: "video", 2: "audio", 17: "subtitle"}


def is_matroska_sound(head: bytes) -> bool:
    """Whether a file's first bytes are a Matroska or WebM file with sound and no picture: what browsers
    record (MediaRecorder's `audio/webm`), and `.mka`/`.weba` files."""
    kinds = matroska_track_kinds(head)
    return kinds is not None and "audio" in kinds and "video" not in kinds


def matroska_track_kinds(head: bytes) -> set[str] | None:
    """The kinds of track ('video', 'audio', ...) a Matroska or WebM file's track list names, read from
    its first bytes; None when `head` is not such a file or its track list is not among them."""
    if not head.startswith(EBML_MAGIC):
        return None
    kinds: set[str] = set()
    start = head.find(_TRACKS)
    while start >= 0 and not kinds:  # the id also stands in the seek index, as the value that points to the list
        size, body = _vint(head, start + len(_TRACKS))
        if size is not None:
            for element, entry_start, entry_end in _children(head, body, body + size):
                if element != _TRACK_ENTRY:
                    continue
                for field, value_start, value_end in _children(head, entry_start, entry_end):
                    if field == _TRACK_TYPE and value_end <= len(head):
                        kind = int.from_bytes(head[value_start:value_end], "big")
                        kinds.add(_TRACK_KINDS.get(kind, "other"))
        start = head.find(_TRACKS, start + 1)
    return kinds or None


def _vint(data: bytes, position: int) -> tuple[int | None, int]:
    """An EBML variable-length size at `position`: its value (None if unknown or cut off) and where
    what it measures starts."""
    if position >= len(data) or data[position] == 0:
        return None, position
    length = 9 - data[position].bit_length()
    if position + length > len(data):
        return None, position
    value = data[position] & (0xFF >> length)
    for byte in data[position + 1:position + length]:
        value = value << 8 | byte
    unknown = value == (1 << (7 * length)) - 1  # all ones: a size the muxer left open (live recordings)
    return None if unknown else value, position + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The elements between `start` and `end`: (the id's first byte, where its value starts, where it
    ends). The ids looked for here are one byte long. Stops at anything it cannot read."""
    found = []
    position, end = start, min(end, len(data))  # a size may claim more than the head holds
    while position < end:
        element = data[position]
        if element == 0:
            break
        size, value = _vint(data, position + 9 - element.bit_length())  # an id's first byte says its length
        if size is None:
            break
        found.append((element, value, value + size))
        position = value + size
    return found

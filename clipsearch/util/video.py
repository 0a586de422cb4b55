"""Read untrusted video files into the frames that stand for them: one per segment, cut at scene changes.

PyAV (the [video] extra; its wheels bundle FFmpeg) decodes the file. Every bound of
clipsearch.config.VideoSampling is checked as early as it can be: the frame size and the declared
length on the header, before any frame is decoded; the length reached, every frame's size and the
time spent, while decoding. A file past one, or that FFmpeg cannot read, raises VideoDecodeError
(VideoTooLarge for a bound) with a short reason, and nothing of it is kept.

Segmenting streams through the video once, keeping at most `max_segments + 1` small frames, so
memory stays bounded whatever the length: a frame examined (`analysis_fps` a second) starts a
segment when its 16×16 colour picture differs from the last one examined by more than the
threshold, or when `max_gap_s` passed without one. Past `max_segments`, the boundary between the
two neighbours that differ least is removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.config import VideoSampling
from clipsearch.errors import VideoDecodeError, VideoTooLarge
from clipsearch.util.media import EBML_MAGIC, failure_reason, is_matroska_sound, open_media

DEFAULT_SAMPLING = VideoSampling()
EXTRA_HINT = "video files need the [video] extra: pip install 'clipsearch[video]'"
SIGNATURE_SIZE = 16
KEPT_FRAME_SIDE = 448
"""Frames kept for embedding are scaled to at most this many pixels on their longer side: above
any model's input (224 to 336), so the model's own preprocessing decides the rest."""

VIDEO_MEDIA_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm", "matroska": "video/x-matroska",
                     "avi": "video/x-msvideo"}
"""The container families accepted, by what FFmpeg's probe names them, with the type they are served as."""


@dataclass(frozen=True)
class VideoSegment:
    """One stretch of a video, from `start_s` up to `end_s`, and its first frame (RGB, scaled down)."""

    start_s: float
    end_s: float
    frame: Image.Image


@dataclass(frozen=True)
class VideoSummary:
    """A video as read: its segments (in time order, covering it whole), and what the header said."""

    segments: list[VideoSegment]
    duration_s: float
    width: int
    height: int
    codec: str
    container: str
    decoded_frames: int

    def record(self) -> dict[str, Any]:
        """What an item keeps of its video beside its segments (clipsearch.store.segments)."""
        return {"duration_s": round(self.duration_s, 3), "width": self.width, "height": self.height,
                "codec": self.codec, "container": self.container}


def looks_like_video(head: bytes) -> bool:
    """Whether the first bytes of a file (MEDIA_HEAD_BYTES of them) are a video container's: ISO (MP4,
    MOV: `ftyp` at 4, but not a picture's brand nor a sound-only one, M4A: clipsearch.util.audio), EBML
    (Matroska, WebM; but not one whose tracks are sound only), RIFF AVI. Files are recognised by
    content, never by name."""
    return (len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] not in (b"avif", b"avis", b"heic", b"heix",
                                                                          b"mif1", b"msf1",  # pictures
                                                                          b"M4A ", b"M4B ", b"M4P ")) \
        or (head.startswith(EBML_MAGIC) and not is_matroska_sound(head)) \
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoDecodeError(EXTRA_HINT) from None
    return av


def read_video(source: Path | bytes, sampling: VideoSampling = DEFAULT_SAMPLING) -> VideoSummary:
    """The segments of the video in `source` (a path, or the file's bytes), within `sampling`'s bounds."""
    av = _av()
    deadline = time.monotonic() + sampling.decode_timeout_s
    container = open_media(av, source, sampling.decode_timeout_s, "video", VideoDecodeError,
                           lambda: _check_time(sampling, deadline))
    with container:
        family = container_family(container.format.name)
        if family is None:
            raise VideoDecodeError(f"a {container.format.long_name or container.format.name} file is not a video "
                                   f"container accepted here ({', '.join(VIDEO_MEDIA_TYPES)})")
        if not container.streams.video:
            raise VideoDecodeError("the file holds no video stream")
        stream = container.streams.video[0]
        _check_decoder(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, sampling)
        declared = container.duration / 1_000_000 if container.duration else None
        if declared is not None and declared > sampling.max_seconds:
            raise VideoTooLarge(f"the video is {declared:.0f} s long, over the limit of {sampling.max_seconds:.0f} s")
        stream.thread_type = "AUTO"
        segmenter = _Segmenter(sampling)
        try:
            for frame in container.decode(stream):
                segmenter.add(frame, _check_frame(frame, sampling, deadline))
        except av.error.FFmpegError as error:
            _check_time(sampling, deadline)
            if not segmenter.frames:
                raise VideoDecodeError(f"no frame could be decoded ({failure_reason(error)})") from None
            # A file cut short still gives what was decoded before the cut; the end is where it stopped.
        codec = stream.codec_context.name
    if not segmenter.frames:
        raise VideoDecodeError("the video holds no frame")
    segments = segmenter.finish()
    if segmenter.rotation % 180:  # recorded as shown: a portrait video is taller than wide
        width, height = height, width
    return VideoSummary(segments, segments[-1].end_s, width, height, codec, family, segmenter.frames)


def video_media_type(path: Path, family: str | None = None) -> str:
    """The media type a video file is served as, from its container family (as VideoSummary.container
    recorded it; FFmpeg probes the file when none is given), application/octet-stream if none. A
    player asks again for every range it seeks to, so the family an item recorded saves a probe."""
    try:
        if family is None:
            av = _av()
            try:
                with av.open(str(path)) as container:
                    family = container_family(container.format.name)
            except av.error.FFmpegError:
                return "application/octet-stream"
        with path.open("rb") as file:
            head = file.read(64)
    except OSError:
        return "application/octet-stream"
    if family == "matroska" and b"webm" in head:  # WebM is Matroska whose header's DocType says so
        return VIDEO_MEDIA_TYPES["webm"]
    return VIDEO_MEDIA_TYPES.get(family or "", "application/octet-stream")


def frame_at(path: Path, at_s: float, sampling: VideoSampling = DEFAULT_SAMPLING,
             side: int = KEPT_FRAME_SIDE) -> Image.Image:
    """The video's frame shown at `at_s` seconds (the last one at or before it), scaled to at most
    `side` pixels: a seek to the key frame before it, then decoding on to it."""
    av = _av()
    deadline = time.monotonic() + sampling.decode_timeout_s
    try:
        with av.open(str(path), timeout=sampling.decode_timeout_s) as container:
            if not container.streams.video:
                raise VideoDecodeError("the file holds no video stream")
            stream = container.streams.video[0]
            _check_decoder(stream)
            _check_pixels(stream.codec_context.width, stream.codec_context.height, sampling)
            if stream.time_base is not None and at_s > 0:
                container.seek(int(at_s / stream.time_base), stream=stream, backward=True, any_frame=False)
            shown = None
            for frame in container.decode(stream):
                if shown is not None and _check_frame(frame, sampling, deadline) > at_s + 1e-6:
                    break
                shown = frame
                if frame.time is not None and frame.time >= at_s:
                    break
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"not a readable video ({failure_reason(error)})") from None
    if shown is None:
        raise VideoDecodeError(f"no frame at {at_s:.3f} s")
    return _scaled(shown, side)


def container_family(format_name: str) -> str | None:
    """The accepted container family of FFmpeg's demuxer names ('mov,mp4,m4a,3gp,3g2,mj2' is one demuxer)."""
    names = set(format_name.split(","))
    if "mp4" in names:
        return "mp4"
    if "matroska" in names or "webm" in names:
        return "matroska"
    return "avi" if "avi" in names else None


def _check_decoder(stream: Any) -> None:
    if stream.codec_context is None:  # the container names a codec this build of FFmpeg has no decoder for
        tag = getattr(stream, "codec_tag", None) or "unknown"
        raise VideoDecodeError(f"the video's codec ({tag}) cannot be decoded by this build of FFmpeg")


def _check_pixels(width: int, height: int, sampling: VideoSampling) -> None:
    if width <= 0 or height <= 0:
        raise VideoDecodeError("the video stream declares no frame size")
    if width * height > sampling.max_pixels:
        raise VideoTooLarge(f"frames are {width}x{height} pixels, over the limit of {sampling.max_pixels} pixels")


def _check_frame(frame: Any, sampling: VideoSampling, deadline: float) -> float:
    """The frame's time in seconds, after the bounds that decoding can pass only as it goes."""
    _check_pixels(frame.width, frame.height, sampling)
    at = float(frame.time) if frame.time is not None else 0.0
    if at > sampling.max_seconds:
        raise VideoTooLarge(f"the video runs past the limit of {sampling.max_seconds:.0f} s")
    _check_time(sampling, deadline)
    return at


def _check_time(sampling: VideoSampling, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise VideoTooLarge(f"reading the video took over {sampling.decode_timeout_s:g} s; refused")



def _scaled(frame: Any, side: int) -> Image.Image:
    scale = min(1.0, side / max(frame.width, frame.height))
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    image: Image.Image = frame.to_image(width=width, height=height)
    rotation = getattr(frame, "rotation", 0)  # a phone's portrait video is stored on its side
    if rotation:
        image = image.rotate(rotation, expand=True)
    return image.convert("RGB")


class _Segmenter:
    """Boundaries and their first frames, streamed; `scores[i]` is how strongly boundary i cuts."""

    def __init__(self, sampling: VideoSampling) -> None:
        self.sampling = sampling
        self.starts: list[float] = []
        self.images: list[Image.Image] = []
        self.scores: list[float] = []
        self.frames = 0
        self.last_time = 0.0
        self.last_duration = 0.0
        self.next_examined = 0.0
        self.previous: np.ndarray | None = None
        self.rotation = 0
        """Degrees the first frame is turned to be shown (a phone's portrait video is stored on its side)."""

    def add(self, frame: Any, at: float) -> None:
        self.frames += 1
        if self.frames == 1:
            self.rotation = int(getattr(frame, "rotation", 0) or 0)
        if frame.duration is not None and frame.time_base is not None:
            self.last_duration = float(frame.duration * frame.time_base)
        elif at > self.last_time:
            self.last_duration = at - self.last_time
        self.last_time = max(self.last_time, at)
        # A frame stamped before the last segment's start (a damaged stream's timestamps) cuts nothing.
        if self.starts and (at < self.next_examined or at < self.starts[-1]):
            return
        # Frames are examined on a fixed grid of times, so a cut is placed within one step of it
        # (1 / analysis_fps), whatever the frame rate.
        step = 1.0 / self.sampling.analysis_fps
        self.next_examined = (np.floor(at / step + 1e-6) + 1) * step
        signature = frame.reformat(width=SIGNATURE_SIZE, height=SIGNATURE_SIZE, format="rgb24").to_ndarray()
        signature = signature.astype(np.float32) / 255.0
        change = 1.0 if self.previous is None else float(np.abs(signature - self.previous).mean())
        self.previous = signature
        if not self.starts or change > self.sampling.scene_threshold \
                or at - self.starts[-1] >= self.sampling.max_gap_s:
            self.starts.append(at)
            self.images.append(_scaled(frame, KEPT_FRAME_SIDE))
            self.scores.append(change)
            if len(self.starts) > self.sampling.max_segments:
                self._merge_weakest()

    def _merge_weakest(self) -> None:
        """Remove the boundary that cuts least (never the first, which starts the video)."""
        weakest = 1 + int(np.argmin(self.scores[1:]))
        for held in (self.starts, self.images, self.scores):
            del held[weakest]

    def finish(self) -> list[VideoSegment]:
        end = max(self.last_time + self.last_duration, self.starts[-1])
        ends = [*self.starts[1:], end]
        # The first segment starts at 0 even where the stream's first frame is stamped a little later.
        starts = [0.0, *self.starts[1:]]
        return [VideoSegment(round(start, 3), round(stop, 3), image)
                for start, stop, image in zip(starts, ends, self.images, strict=True)]

"""Read untrusted sound files into mono samples at the audio model's rate, cut into overlapping windows.

PyAV (in the [audio] extra; its wheels bundle FFmpeg) decodes the
file and resamples it. Every bound of clipsearch.config.AudioSampling is checked as early as it can
be: the declared length on the header, before anything is decoded; the length reached and the time
spent, while decoding. A file past one, or that FFmpeg cannot read, raises AudioDecodeError
(AudioTooLarge for a bound) with a short reason, and nothing of it is kept.

Samples are held as float32 at the model's rate (CLAP's 48 kHz: 192 KB a second, 2.8 GB for the
four-hour default bound), so the bound on length is also the bound on memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.config import AudioSampling
from clipsearch.errors import AudioDecodeError, AudioTooLarge, NoSoundTrack
from clipsearch.util.media import failure_reason, is_matroska_sound, open_media
from clipsearch.util.video import VIDEO_MEDIA_TYPES, container_family

DEFAULT_SAMPLING = AudioSampling()
EXTRA_HINT = "sound files need the [audio] extra: pip install 'clipsearch[audio]'"
AUDIO_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg",
                     "m4a": "audio/mp4", "webm": "audio/webm"}
"""The container formats accepted, by what FFmpeg's probe names them, with the type they are served as
(`m4a`: the MP4 family's, AAC or ALAC in phones' voice memos and music libraries; `webm`: Matroska's,
which FFmpeg names "matroska,webm", as browsers record it)."""
M4A_BRANDS = (b"M4A ", b"M4B ", b"M4P ")
"""An MP4 file's major brands that say it holds sound only (music, audiobooks), not a video."""


@dataclass(frozen=True)
class AudioClip:
    """A recording as read: mono float32 samples at `sample_rate`, and what the header said."""

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    channels: int
    codec: str
    container: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def record(self) -> dict[str, Any]:
        """What an item keeps of its recording beside its windows (clipsearch.store.segments)."""
        return {"duration_s": round(self.duration_s, 3), "sample_rate": self.source_rate, "channels": self.channels,
                "codec": self.codec, "container": self.container}

    def windows(self, window_s: float, hop_s: float) -> list[tuple[float, float]]:
        """The spans of the windows that cover the recording (see window_spans)."""
        return window_spans(self.duration_s, window_s, hop_s)

    def excerpt(self, start_s: float, end_s: float) -> np.ndarray:
        """The samples from `start_s` up to `end_s`."""
        return self.samples[round(start_s * self.sample_rate):round(end_s * self.sample_rate)]


def window_spans(duration_s: float, window_s: float, hop_s: float) -> list[tuple[float, float]]:
    """Windows of `window_s` starting every `hop_s`, the last one ending at the end (so it may overlap
    its neighbour more); one window, the whole recording, when it is no longer than a window. Spans
    are in milliseconds' precision, as items keep them."""
    if duration_s <= window_s:
        return [(0.0, round(duration_s, 3))]
    # Both ends are rounded from the exact times, so that windows a hop apart which abut exactly still
    # abut once rounded (rounding the start, then adding the window, can leave a millisecond between them).
    starts = [position * hop_s for position in range(math.ceil((duration_s - window_s) / hop_s))]
    last = round(duration_s - window_s, 3)
    if starts and round(starts[-1], 3) >= last:  # the end is within a millisecond of a window's: that one ends there
        starts.pop()
    return [(float(round(start, 3)), float(round(start + window_s, 3))) for start in starts] + \
        [(float(last), float(round(duration_s, 3)))]


def looks_like_audio(head: bytes) -> bool:
    """Whether the first bytes of a file (MEDIA_HEAD_BYTES of them) are a sound file's: RIFF WAVE, FLAC,
    Ogg, an MP4 of a sound-only brand (M4A), a Matroska or WebM file whose tracks are sound only, MP3
    (an ID3 tag or an MPEG audio frame's sync word). Files are recognised by content, never by name."""
    return (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head.startswith((b"fLaC", b"OggS", b"ID3")) \
        or is_matroska_sound(head) \
        or (head[4:8] == b"ftyp" and head[8:12] in M4A_BRANDS) \
        or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0)


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise AudioDecodeError(EXTRA_HINT) from None
    return av


def read_audio(source: Path | bytes, sample_rate: int, sampling: AudioSampling = DEFAULT_SAMPLING,
               of_video: bool = False) -> AudioClip:
    """The recording in `source` (a path, or the file's bytes) as mono samples at `sample_rate`,
    within `sampling`'s bounds. With `of_video`, the sound track of a video file (its container, as
    clipsearch.util.video names it, is the clip's): NoSoundTrack when it has none."""
    av = _av()
    deadline = time.monotonic() + sampling.decode_timeout_s
    container = open_media(av, source, sampling.decode_timeout_s, "video" if of_video else "sound file",
                           AudioDecodeError, lambda: _check_time(sampling, deadline))
    with container:
        family = (container_family if of_video else _family)(container.format.name)
        if family is None:
            accepted = ", ".join(VIDEO_MEDIA_TYPES if of_video else AUDIO_MEDIA_TYPES)
            raise AudioDecodeError(f"a {container.format.long_name or container.format.name} file is not a "
                                   f"{'video' if of_video else 'sound'} format accepted here ({accepted})")
        if not container.streams.audio:
            raise (NoSoundTrack if of_video else AudioDecodeError)("the file holds no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise AudioDecodeError("the recording's codec cannot be decoded by this build of FFmpeg")
        declared = container.duration / 1_000_000 if container.duration else None
        if declared is not None and declared > sampling.max_seconds:
            raise AudioTooLarge(f"the recording is {declared:.0f} s long, over the limit of "
                                f"{sampling.max_seconds:.0f} s")
        source_rate, channels = int(stream.codec_context.sample_rate or 0), int(stream.codec_context.channels or 0)
        codec = stream.codec_context.name
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        limit = int(sampling.max_seconds * sample_rate)
        parts: list[np.ndarray] = []
        held = 0
        try:
            for frame in container.decode(stream):
                try:
                    resampled = resampler.resample(frame)
                except ValueError:
                    # The stream changed its rate or channels midway (joined files, or a damaged frame): what
                    # came before is kept, and a new resampler takes the rest as it now is.
                    for rest in resampler.resample(None):
                        held += _take(rest, parts, limit - held, sampling)
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                    resampled = resampler.resample(frame)
                for piece in resampled:
                    held += _take(piece, parts, limit - held, sampling)
                _check_time(sampling, deadline)
            for piece in resampler.resample(None):  # what the resampler still holds
                held += _take(piece, parts, limit - held, sampling)
        except (av.error.FFmpegError, ValueError) as error:
            _check_time(sampling, deadline)
            if not held:
                raise AudioDecodeError(f"no sound could be decoded ({failure_reason(error)})") from None
            # A file cut short still gives what was decoded before the cut.
    if not held:
        raise AudioDecodeError("the recording holds no sound")
    return AudioClip(np.concatenate(parts), sample_rate, source_rate or sample_rate, channels or 1, codec, family)


def audio_media_type(container: str) -> str:
    """The media type a recording read as `container` (AudioClip.container) is served as."""
    return AUDIO_MEDIA_TYPES.get(container, "application/octet-stream")


def _take(frame: Any, parts: list[np.ndarray], room: int, sampling: AudioSampling) -> int:
    samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    if len(samples) > room:
        raise AudioTooLarge(f"the recording runs past the limit of {sampling.max_seconds:.0f} s")
    parts.append(samples)
    return len(samples)


def _family(format_name: str) -> str | None:
    names = set(format_name.split(","))
    for family in AUDIO_MEDIA_TYPES:
        if family in names:
            return family
    return None


def _check_time(sampling: AudioSampling, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise AudioTooLarge(f"reading the recording took over {sampling.decode_timeout_s:g} s; refused")

"""Sound files made in the tests with numpy and PyAV: tones and noise that change at known times."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TONES = (220.0, 440.0, 880.0, 1760.0, 3520.0)
NOISE = 0.0
"""A part of 'frequency' NOISE is white noise, not a tone."""
FORMATS = {"wav": ("wav", "pcm_s16le"), "flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"),
           "ogg": ("ogg", "libopus"), "m4a": ("ipod", "aac"), "webm": ("webm", "libopus")}
"""What each sound format is written as: (container, encoder). Ogg holds Opus: this FFmpeg has no Vorbis encoder.
WebM holds Opus too, as browsers record it."""


def samples_of(parts: Sequence[tuple[float, float]], rate: int, seed: int = 0) -> np.ndarray:
    """Mono float32 samples of `parts` (frequency, seconds) one after another: a tone, or noise for NOISE."""
    rng = np.random.default_rng(seed)
    pieces = []
    for frequency, seconds in parts:
        count = round(seconds * rate)
        if frequency == NOISE:
            pieces.append(rng.uniform(-0.3, 0.3, count))
        else:
            pieces.append(0.3 * np.sin(2 * np.pi * frequency * np.arange(count) / rate))
    return np.concatenate(pieces).astype(np.float32)


def write_sound(path: Path, parts: Sequence[tuple[float, float]], rate: int = 48_000, channels: int = 1,
                kind: str = "wav", seed: int = 0) -> Path:
    """A sound file of `parts` (see samples_of) in `kind` (a FORMATS key), the same on every channel."""
    import av

    container, codec = FORMATS[kind]
    with av.open(str(path), mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="stereo" if channels == 2 else "mono")
        encode_samples(output, stream, samples_of(parts, rate, seed), rate, channels)
    return path


def encode_samples(output: Any, stream: Any, samples: np.ndarray, rate: int, channels: int = 1) -> None:
    """Encode mono `samples` (the same on every channel) into `stream`, a sound stream of the PyAV
    container `output` open for writing, and flush it."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    planar = np.ascontiguousarray(np.stack([samples] * channels))
    step = 960 if stream.codec_context.name == "libopus" else 1024  # Opus: 20 ms frames at 48 kHz; AAC: 1024
    for start in range(0, planar.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + step]), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            output.mux(packet)
    for packet in stream.encode(None):
        output.mux(packet)


def three_parts(path: Path, **options: object) -> Path:
    """A 220 Hz tone 0–12 s, noise 12–24 s, a 1760 Hz tone 24–36 s."""
    return write_sound(path, [(TONES[0], 12.0), (NOISE, 12.0), (TONES[3], 12.0)], **options)  # type: ignore[arg-type]


def sound_corpus(folder: Path) -> Path:
    """Three recordings in `folder`: `three.wav` (three_parts, 36 s), `high.flac` (a 3520 Hz tone, 6 s,
    44.1 kHz stereo, captioned) and `rain.ogg` (noise, 8 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    three_parts(folder / "three.wav")
    write_sound(folder / "high.flac", [(TONES[4], 6.0)], kind="flac", channels=2, rate=44_100)
    (folder / "high.txt").write_text("a high whistle", encoding="utf-8")
    write_sound(folder / "rain.ogg", [(NOISE, 8.0)], kind="ogg", seed=7)
    return folder

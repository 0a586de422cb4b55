"""Video files made in the tests with PyAV: coloured scenes that change at known times."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from tests.support.sounds import encode_samples, samples_of

SOUND_RATE = 48_000
SCENE_COLOURS = ((200, 30, 30), (30, 160, 40), (30, 40, 200), (220, 200, 40), (150, 40, 160), (20, 170, 170))


def scene_frame(colour: Sequence[int], width: int, height: int, seed: int) -> np.ndarray:
    """One frame of a scene: its colour with a lighter square whose place the seed picks, and a little noise."""
    rng = np.random.default_rng(seed)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = colour
    y, x = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    frame[y:y + height // 3, x:x + width // 3] = np.minimum(255, np.array(colour) + 60)
    return frame


def write_scenes(path: Path, scenes: Sequence[tuple[Sequence[int], float]], fps: int = 10, width: int = 96,
                 height: int = 64, codec: str = "libx264", container: str | None = None, static: bool = True,
                 sound: Sequence[tuple[float, float]] | None = None) -> Path:
    """A video of `scenes` (colour, seconds) one after another; each scene's frames are the same
    picture (or, with static=False, the square moves a little from frame to frame). With `sound`
    (frequency, seconds parts: tests.support.sounds.samples_of), a sound track too: AAC, or Opus in WebM."""
    import av

    options = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else {}
    with av.open(str(path), mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        # Every stream is added before the first packet is written (the header names them all).
        track = None if sound is None else output.add_stream("libopus" if output.format.name == "webm" else "aac",
                                                             rate=SOUND_RATE, layout="mono")
        number = 0
        for scene, (colour, seconds) in enumerate(scenes):
            for frame_in_scene in range(round(seconds * fps)):
                seed = scene * 1000 + (0 if static else frame_in_scene // 3)
                frame = av.VideoFrame.from_ndarray(scene_frame(colour, width, height, seed), format="rgb24")
                frame.pts = number
                number += 1
                for packet in stream.encode(frame):
                    output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        if track is not None:
            encode_samples(output, track, samples_of(sound or (), SOUND_RATE), SOUND_RATE)
    return path


def four_scenes(path: Path, **options: object) -> Path:
    """Red 0–2 s, green 2–4 s, blue 4–6 s, yellow 6–8 s."""
    return write_scenes(path, [(colour, 2.0) for colour in SCENE_COLOURS[:4]], **options)  # type: ignore[arg-type]


def turned_a_quarter(path: Path) -> Path:
    """`path` (an MP4) marked to be shown turned a quarter clockwise, as a phone held upright records:
    its track header's matrix rewritten in place (this FFmpeg's muxer does not write one)."""
    data = bytearray(path.read_bytes())
    matrix = data.index(b"tkhd") + 44  # after the box's type: version and flags, times, ids, layer, volume
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


def two_halves(path: Path, seconds: float = 1.0, fps: int = 10, width: int = 96, height: int = 64) -> Path:
    """An MP4 whose frames are red on their left half and blue on their right, as stored."""
    import av

    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, :width // 2], frame[:, width // 2:] = SCENE_COLOURS[0], SCENE_COLOURS[2]
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for number in range(round(seconds * fps)):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = number
            for packet in stream.encode(picture):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path

"""Queries in the audio model's space: texts through its text tower, uploaded clips through its audio tower.

Sounds live in a space of their own (clipsearch.model.audio), so a query that targets them is
embedded by the audio model, never the image model; each tower runs in a batcher of its own, so
concurrent queries share passes and never wait behind the image model's. An uploaded clip is read
and cut as the collection's recordings were (clipsearch.util.audio) and stands for the mean of its
windows' vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import numpy as np

from clipsearch.config import AudioSampling, Batching, QueryLimits
from clipsearch.errors import AudioDecodeError, ServiceBusy
from clipsearch.modality import Modality
from clipsearch.model.audio import AudioEncoder
from clipsearch.search.query import Encoding, QueryVector, check_text
from clipsearch.util.audio import read_audio
from clipsearch.util.batching import MicroBatcher

Result = TypeVar("Result")
Item = TypeVar("Item")


class SoundQueries:
    """Embeds the queries of one collection's sounds with its audio model; thread-safe."""

    def __init__(self, encoder: AudioEncoder, hop_s: float, limits: QueryLimits, batching: Batching) -> None:
        self.encoder, self.hop_s, self.limits = encoder, hop_s, limits
        self.reading = AudioSampling(hop_s=hop_s, max_seconds=limits.max_audio_seconds,
                                     decode_timeout_s=limits.decode_timeout_s)
        self._texts: MicroBatcher[str, tuple[np.ndarray, float]] = MicroBatcher(
            _timed(encoder.encode_texts), batching.max_batch, batching.window_s, name="encode-audio-text")
        self._windows: MicroBatcher[np.ndarray, tuple[np.ndarray, float]] = MicroBatcher(
            _timed(encoder.encode_audio), batching.max_batch, batching.window_s, name="encode-audio")

    def text(self, text: str, field: str = "text") -> QueryVector:
        """A text's unit vector in the audio model's space (checked first, naming `field`: a text the
        model cannot read, such as Chinese for LAION's English CLAP, is refused)."""
        check_text(text, field, self.limits)
        self.encoder.check_language(text, field)
        vector, seconds = self._wait(self._texts.submit(text))
        truncated = (field,) if self.encoder.is_truncated(text) else ()
        return QueryVector(vector, truncated, (Encoding(Modality.TEXT, seconds),))

    def clip(self, data: bytes, field: str = "file") -> QueryVector:
        """An uploaded clip's unit vector: the mean of its windows' (AudioDecodeError naming `field`)."""
        try:
            clip = read_audio(data, self.encoder.sampling_rate, self.reading)
        except AudioDecodeError as error:
            raise type(error)(error.reason, field) from None
        vectors, seconds = self._embed([clip.excerpt(start, end)
                                        for start, end in clip.windows(self.encoder.window_s, self.hop_s)])
        mean = vectors.astype(np.float64).mean(axis=0)
        unit = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        return QueryVector(unit, (), (Encoding(Modality.AUDIO, seconds),))

    def windows(self, windows: Sequence[np.ndarray], background: bool = False) -> np.ndarray:
        """Unit vectors (float32 (m, d)) of windows of samples, side by side (`background`: behind every query)."""
        return self._embed(windows, background)[0]

    def close(self) -> None:
        self._texts.close()
        self._windows.close()

    def _embed(self, windows: Sequence[np.ndarray], background: bool = False) -> tuple[np.ndarray, float]:
        """The windows' unit vectors, and the longest pass that made them."""
        futures = [self._windows.submit(window, background=background) for window in windows]
        done = [self._wait(future) for future in futures]
        vectors = np.stack([vector for vector, _ in done]) if done else \
            np.zeros((0, self.encoder.embedding_dim), np.float32)
        return vectors, max((seconds for _, seconds in done), default=0.0)


    def _wait(self, future: Future[Result]) -> Result:
        try:
            return future.result(timeout=self.limits.encode_timeout_s)
        except FutureTimeout:
            future.cancel()
            raise ServiceBusy(f"the audio model did not finish within {self.limits.encode_timeout_s:g} s; "
                              "the server is overloaded, try again") from None


def _timed(encode: Callable[[list[Item]], np.ndarray]) -> Callable[[list[Item]], list[tuple[np.ndarray, float]]]:
    """`encode` for a batcher: each input's vector, with the seconds its whole batch took."""
    def run(batch: list[Item]) -> list[tuple[np.ndarray, float]]:
        started = time.perf_counter()
        vectors = encode(batch)
        seconds = time.perf_counter() - started
        return [(vector, seconds) for vector in vectors]
    return run

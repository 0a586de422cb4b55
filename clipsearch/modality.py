"""The shared vocabulary of modalities, used by the bundle, the search and the API."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Modality(StrEnum):
    IMAGE = "image"
    TEXT = "text"
    VIDEO = "video"
    """One item per video file, searched by its segments (clipsearch.store.segments)."""
    AUDIO = "audio"
    """One item per sound file, searched by its windows (clipsearch.store.segments), in the audio
    model's own space: texts reach it through that model's text tower, never the image model's."""

    @property
    def timed(self) -> bool:
        """Whether an item of this modality is held as several rows (segments, windows) with time spans."""
        return self in (Modality.VIDEO, Modality.AUDIO)

    @property
    def own_space(self) -> bool:
        """Whether this modality's vectors come from a model of their own (the audio model), so that
        they compare with no other modality's vectors."""
        return self is Modality.AUDIO


def recall_queries_for(modality: Modality, present: Iterable[Modality]) -> Modality | None:
    """Which of the `present` modalities an index of `modality` measures its recall with, as queries
    from the other side: texts first (what users search with), then images, then videos; none for a
    modality of its own space (the audio model's), whose vectors compare with no other's."""
    if modality.own_space:
        return None
    others = [other for other in Modality if other is not modality and other in set(present) and not other.own_space]
    return min(others, key=lambda other: (other is not Modality.TEXT, list(Modality).index(other)), default=None)

"""The shared vocabulary of modalities, used by the bundle, the search and the API."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Modality(StrEnum):
    IMAGE = "image"
    TEXT = "text"
    VIDEO = "video"
    """One item per video file, searched by its segments (clipsearch.store.segments)."""


def recall_queries_for(modality: Modality, present: Iterable[Modality]) -> Modality | None:
    """Which of the `present` modalities an index of `modality` measures its recall with, as queries
    from the other side: texts first (what users search with), then images, then videos."""
    others = [other for other in Modality if other is not modality and other in set(present)]
    return min(others, key=lambda other: (other is not Modality.TEXT, list(Modality).index(other)), default=None)

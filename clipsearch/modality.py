"""The shared vocabulary of modalities, used by the bundle, the search and the API."""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    IMAGE = "image"
    TEXT = "text"

"""Whether a text is written in the Latin script: what the English-only models (BLIP's questions,
CLAP's texts) can read at all."""

from __future__ import annotations

import unicodedata

MAX_FOREIGN_SHARE = 0.25
"""A text with at least this share of its letters outside the Latin script is not English: an
English-only model would embed it, or answer it, with a guess."""


def foreign_share(text: str) -> float:
    """The share of the letters of `text` outside the Latin script (0 for a text without letters)."""
    letters = [character for character in text if character.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for letter in letters if not unicodedata.name(letter, "").startswith("LATIN")) / len(letters)


def reads_as_latin(text: str) -> bool:
    """Whether an English-only model can read `text`: less than MAX_FOREIGN_SHARE of its letters are foreign."""
    return foreign_share(text) < MAX_FOREIGN_SHARE

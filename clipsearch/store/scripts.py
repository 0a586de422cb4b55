"""Words and scripts, as keyword search and OCR matches see them."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

WORD = re.compile(r"\w+")
"""A word: a run of letters, digits and underscores, in any script."""

UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")
"""Scripts written without spaces between words."""


def is_unspaced(character: str) -> bool:
    """Whether `character` belongs to a script written without spaces between words."""
    return ord(character) > 0x7F and unicodedata.name(character, "").startswith(UNSPACED_SCRIPTS)


def holds(text: str, word: str) -> bool:
    """Whether `text` holds `word` (lowercase), case aside: where it starts and ends, no letter touches
    a letter and no digit a digit (so "Invoice2024" holds "invoice" and "2024": OCR often drops
    that space), or anywhere for a word of a script written without spaces."""
    lowered = text.lower()
    if any(is_unspaced(character) for character in word):
        return word in lowered
    return _standing_alone(word).search(lowered) is not None


@lru_cache(maxsize=1024)
def _standing_alone(word: str) -> re.Pattern[str]:
    def touching(character: str) -> str:
        return r"\d" if character.isdigit() else r"[^\W\d_]"

    return re.compile(rf"(?<!{touching(word[0])}){re.escape(word)}(?!{touching(word[-1])})")

"""The texts of an image item that a fused bundle embeds beside its picture (clipsearch.index.fusion)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipsearch.store.ocr_text import readable_text

EMBEDDED_CHARS = 1000
"""The most of a text that is embedded: CLIP's text tower reads 77 tokens (a few hundred
characters) and its tokenizer cuts the rest; a page of read text could otherwise pass a server's
limit on a text's length."""


def part_text(part: str, caption: str | None, extra: Mapping[str, Any]) -> str:
    """An image item's text of fusion part `part` ('caption' or 'ocr'), as embedded; empty where it
    has none, and then its picture stands in for it."""
    if part == "caption":
        text = caption or ""
    elif part == "ocr":
        text = readable_text(extra)
    else:
        raise ValueError(f"no fusion part {part!r}")
    return text.strip()[:EMBEDDED_CHARS]

"""The texts of an image that a fused bundle embeds: its caption, and what it says as read."""

from __future__ import annotations

import pytest

from clipsearch.store.fused_texts import EMBEDDED_CHARS, part_text
from clipsearch.store.ocr_text import ocr_metadata

READ = ocr_metadata("rapidocr", [{"text": "GRANDOPENING", "spaced": "GRAND OPENING", "box": [], "score": 0.9},
                                 {"text": "Today only", "box": [], "score": 0.8}])


def test_the_caption_part_is_the_caption_and_the_ocr_part_the_lines_with_their_spaces_back() -> None:
    assert part_text("caption", "  a shop front ", READ) == "a shop front"
    assert part_text("ocr", "a shop front", READ) == "GRAND OPENING\nToday only"


def test_an_image_without_the_text_has_an_empty_part() -> None:
    assert part_text("caption", None, READ) == "" == part_text("ocr", "a caption", {})
    assert part_text("ocr", None, ocr_metadata("rapidocr", [], problem="timed out")) == ""


def test_a_long_text_is_cut_to_what_the_text_tower_could_read() -> None:
    page = ocr_metadata("rapidocr", [{"text": "word " * 400, "box": [], "score": 0.9}])
    assert len(part_text("ocr", None, page)) == EMBEDDED_CHARS


def test_an_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="text"):
        part_text("text", "a", {})

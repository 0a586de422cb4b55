"""Text read from images, as items keep it in their metadata, and what of it is searched and shown."""

from __future__ import annotations

from typing import Any

from clipsearch.config import OcrConfig
from clipsearch.model.ocr import load_reader
from clipsearch.store.ocr_text import (
    keyword_body,
    matching_lines,
    ocr_lines,
    ocr_metadata,
    ocr_part,
    ocr_problem,
    query_words,
    read_image_text,
    with_ocr,
    without_ocr,
)
from tests.support.imagefiles import image_bytes, words_picture

LINES = [{"text": "Invoice2024", "box": [[10, 10], [90, 10], [90, 30], [10, 30]], "score": 0.97},
         {"text": "seminarfree", "box": [[10, 40], [90, 40], [90, 60], [10, 60]], "score": 0.99,
          "spaced": "seminar free"},
         {"text": "北京发票", "box": [[10, 70], [90, 70], [90, 90], [10, 90]], "score": 0.99}]


def read(lines: list[dict[str, Any]] = LINES) -> dict[str, Any]:
    return ocr_metadata("rapidocr 1.4.4 (…)", lines)


def test_the_text_is_its_lines_and_the_record_keeps_their_boxes_and_the_engine() -> None:
    metadata = read()
    assert metadata["ocr_text"] == "Invoice2024\nseminarfree\n北京发票"
    assert metadata["ocr"] == {"engine": "rapidocr 1.4.4 (…)", "lines": LINES}
    assert ocr_lines(metadata) == LINES and ocr_problem(metadata) is None


def test_an_image_without_text_has_an_empty_record_and_no_text_key() -> None:
    assert ocr_metadata("rapidocr", []) == {"ocr": {"engine": "rapidocr", "lines": []}}


def test_an_image_whose_text_was_not_read_says_why_and_has_no_text() -> None:
    metadata = ocr_metadata("rapidocr", [], problem="text not read within 20 s")
    assert metadata == {"ocr": {"engine": "rapidocr", "problem": "text not read within 20 s"}}
    assert ocr_problem(metadata) == "text not read within 20 s" and ocr_lines(metadata) == []


def test_reading_replaces_the_reserved_keys_and_keeps_the_rest() -> None:
    mine = {"album": "Paris", "ocr_text": "typed by hand", "ocr": "mine"}
    merged = with_ocr(mine, read())
    assert merged == {"album": "Paris", **read()}
    assert without_ocr(merged) == {"album": "Paris"} and ocr_part(merged) == read()


def test_the_keyword_body_holds_the_text_its_spaced_lines_and_words_apart_from_numbers() -> None:
    body = keyword_body(read()).splitlines()
    assert body[:3] == ["Invoice2024", "seminarfree", "北京发票"]
    assert "seminar free" in body and "Invoice 2024" in body
    assert keyword_body({"album": "Paris"}) == ""


def test_a_hit_shows_the_lines_holding_the_querys_words_with_the_words_they_hold() -> None:
    matches = matching_lines(read(), query_words("Invoice and seminar, 发票"))
    assert [(match["text"], match["words"]) for match in matches] == [
        ("Invoice2024", ["invoice"]), ("seminarfree", ["seminar"]), ("北京发票", ["发票"])]
    assert matches[0]["box"] == LINES[0]["box"]
    assert matching_lines(read(), query_words("holiday")) == []
    assert matching_lines({"album": "x"}, ["x"]) == []


def test_a_chinese_query_longer_than_a_word_is_also_looked_for_by_its_pairs() -> None:
    assert query_words("北京的发票 Cafe") == ["北京的发票", "北京", "京的", "的发", "发票", "cafe"]
    assert [match["words"] for match in matching_lines(read(), query_words("北京的发票"))] == [["北京", "发票"]]


def test_an_image_files_bytes_are_read_into_metadata() -> None:
    reader = load_reader(OcrConfig(threads=2))
    metadata = read_image_text(reader, image_bytes(words_picture("Pumpkin soup"), "JPEG", quality=92))
    assert metadata["ocr_text"] == "Pumpkin soup"
    assert metadata["ocr"]["engine"] == reader.description and len(metadata["ocr"]["lines"]) == 1

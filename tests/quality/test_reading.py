"""Scoring text read from images: word recall (as text holds it, and as separate words), and the
character error rate, checked against hand-worked cases and a brute-force edit distance."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipsearch.config import OcrConfig
from clipsearch.model.ocr import ReadResult, TextLine, load_reader
from clipsearch.quality.reading import Truth, edit_distance, read_all, read_truth, score_reading, truth_words


def result(*lines: str, spaced: dict[str, str] | None = None, problem: str | None = None) -> ReadResult:
    box = ((0, 0), (1, 0), (1, 1), (0, 1))
    return ReadResult(tuple(TextLine(line, box, 0.9, (spaced or {}).get(line)) for line in lines), 0.5, problem)


def truth(*lines: str, key: str, language: str = "en") -> Truth:
    return Truth(Path("/x.jpg"), language, key, lines)


def edit_distance_by_recursion(first: str, second: str) -> int:
    @functools.cache
    def distance(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(distance(i - 1, j) + 1, distance(i, j - 1) + 1,
                   distance(i - 1, j - 1) + (first[i - 1] != second[j - 1]))
    return distance(len(first), len(second))


@settings(max_examples=300, deadline=None)
@given(st.text("ab发票 ", max_size=9), st.text("ab发票 ", max_size=9))
def test_edit_distance_agrees_with_its_definition(first: str, second: str) -> None:
    assert edit_distance(first, second) == edit_distance_by_recursion(first, second)


def test_chinese_lines_are_cut_into_their_key_and_the_pairs_around_it() -> None:
    assert truth_words(truth("特价电影院营业", key="电影院", language="zh")) == ["特价", "电影院", "营业"]
    assert truth_words(truth("open cafe", "new sale", key="cafe")) == ["open", "cafe", "new", "sale"]


def test_a_dropped_space_costs_separate_words_until_the_spaced_form_puts_it_back() -> None:
    expected = [truth("special cafe", key="cafe")]
    run_together = score_reading(expected, [result("specialcafe")])
    assert (run_together.word_recall, run_together.separate_word_recall) == (1.0, 0.0)
    assert run_together.character_error_rate == 0.0  # whitespace is not counted
    spaced = score_reading(expected, [result("specialcafe", spaced={"specialcafe": "special cafe"})])
    assert spaced.separate_word_recall == 1.0


def test_misread_and_missing_text_count_against_recall_and_error_rate() -> None:
    expected = [truth("grand opening", key="grand"), truth("发票今天", key="发票", language="zh")]
    scores = score_reading(expected, [result("grand openlng"), result(problem="text not read within 20 s")])
    assert scores.words == 4 and scores.word_recall == 0.25  # "grand" only
    assert scores.character_error_rate == pytest.approx((1 + 4) / (12 + 4))
    assert scores.unread == 1 and scores.images == 2 and scores.seconds_per_image == 0.5


def test_the_rendered_corpus_is_read_back_word_for_word(signs_dir: Path) -> None:
    truths = read_truth(signs_dir)
    found = read_all(truths, load_reader(OcrConfig(threads=2)).read, progress=False)
    scores = score_reading(truths, found)
    assert scores.images == 12 and scores.unread == 0
    assert scores.separate_word_recall >= 0.95 and scores.character_error_rate <= 0.05

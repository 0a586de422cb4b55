"""Words and scripts: where a word stands alone in a text, against a scan of every position."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipsearch.store.scripts import WORD, holds, is_unspaced
from tests.support.reference import holds_by_scanning

PIECES = ["cat", "Cat", "concat", "2024", "invoice", "INVOICE", "发票", "北京", " ", ",", "_", "é", "9", "s", "\n"]


@settings(max_examples=400, deadline=None)
@given(text=st.lists(st.sampled_from(PIECES), max_size=8).map("".join),
       word=st.sampled_from(["cat", "2024", "invoice", "发票", "京发", "s", "9", "é"]))
def test_holds_agrees_with_a_scan_of_every_position(text: str, word: str) -> None:
    assert holds(text, word) == holds_by_scanning(text, word)


@pytest.mark.parametrize(("text", "word", "held"), [
    ("Invoice2024", "invoice", True),   # OCR drops the space between a word and a number
    ("Invoice2024", "2024", True),
    ("20245", "2024", False),
    ("concatenate", "cat", False),
    ("a cat!", "cat", True),
    ("北京发票", "发票", True),          # no spaces in Chinese: anywhere
])
def test_a_word_is_held_where_it_stands_alone(text: str, word: str, held: bool) -> None:
    assert holds(text, word) is held


def test_scripts_written_without_spaces_are_told_apart() -> None:
    assert [is_unspaced(character) for character in "a发カไé"] == [False, True, True, True, False]
    assert WORD.findall("北京 invoice_2024, é") == ["北京", "invoice_2024", "é"]

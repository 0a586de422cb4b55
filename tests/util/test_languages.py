"""What an English-only model can read: a text whose letters are mostly Latin, whatever digits and
punctuation it holds."""

from __future__ import annotations

import pytest

from clipsearch.util.languages import foreign_share, reads_as_latin


@pytest.mark.parametrize(("text", "share"), [("a dog barking", 0.0), ("狗叫", 1.0), ("", 0.0), ("1234 !?", 0.0),
                                             ("a 狗", 0.5), ("café crème", 0.0), ("Привет", 1.0)])
def test_the_foreign_share_counts_letters_outside_the_latin_script(text: str, share: float) -> None:
    assert foreign_share(text) == pytest.approx(share)


def test_a_text_reads_as_latin_below_a_quarter_of_foreign_letters() -> None:
    assert reads_as_latin("rain on a tin roof") and reads_as_latin("rain on a roof 雨")
    assert not reads_as_latin("雨打在屋顶上") and not reads_as_latin("rain 雨打在屋顶上")

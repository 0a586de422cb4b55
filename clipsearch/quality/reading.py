"""How well text is read from images: word recall and character error rate against a known truth.

The truth is a corpus's `truth.jsonl` (indexer.signs writes one): per image, its path (relative
to the corpus folder), its language, the `lines` it shows and its `key` word.

* **Word recall**: the share of the words an image shows that its read text holds, as the text
  holds them case aside (a substring: what a reader of the text would see), and as separate words
  in the text or in a line's `spaced` form (clipsearch.store.scripts.holds: what keyword search
  matches, so a word run into its neighbour by a dropped space, "specialcafe", counts in the
  second only where the spaces were put back). Chinese words count alike in both.
* **Character error rate**: the edit distance between the read text and the truth, over the
  truth's length, both without whitespace (so a dropped space is not an error here: the word
  recalls above show its cost) and case kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipsearch.model.ocr import ReadResult
from clipsearch.store.scripts import WORD, holds, is_unspaced
from clipsearch.util.progress import progress_bar


@dataclass(frozen=True)
class Truth:
    """What one image of the corpus shows."""

    path: Path
    language: str
    key: str
    lines: tuple[str, ...]


def read_truth(folder: Path) -> list[Truth]:
    """The records of folder/truth.jsonl, with absolute paths."""
    records = []
    for line in (folder / "truth.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records.append(Truth(folder / record["image"], str(record["language"]), str(record["key"]),
                                 tuple(record["lines"])))
    return records


@dataclass(frozen=True)
class ReadingScores:
    images: int
    words: int
    word_recall: float
    """Words held by the read text, case aside."""
    separate_word_recall: float
    """Words held as separate words (what keyword search finds)."""
    character_error_rate: float
    unread: int
    """Images whose text could not be read (time-out, failure)."""
    seconds_per_image: float

    def as_dict(self) -> dict[str, float | int]:
        return {name: round(value, 4) if isinstance(value, float) else value for name, value in vars(self).items()}


def score_reading(truths: Sequence[Truth], found: Sequence[ReadResult]) -> ReadingScores:
    """The scores of `found` (one result per truth, in order)."""
    words = held = separate = 0
    errors = characters = 0
    for truth, result in zip(truths, found, strict=True):
        text = result.text
        searched = [text, *(line.spaced for line in result.lines if line.spaced)]
        for word in truth_words(truth):
            words += 1
            held += word.lower() in text.lower()
            separate += any(holds(form, word.lower()) for form in searched)
        expected = _without_space("".join(truth.lines))
        errors += edit_distance(_without_space(text), expected)
        characters += len(expected)
    count = max(1, len(found))
    return ReadingScores(images=len(found), words=words, word_recall=held / max(1, words),
                         separate_word_recall=separate / max(1, words),
                         character_error_rate=errors / max(1, characters),
                         unread=sum(1 for result in found if result.problem is not None),
                         seconds_per_image=sum(result.elapsed_s for result in found) / count)


def truth_words(truth: Truth) -> list[str]:
    """The words an image shows. Chinese has no spaces: a Chinese line is taken as the words it was
    made of where the corpus says (its key), else each of its two-character runs."""
    words = []
    for line in truth.lines:
        for word in line.split():
            if any(is_unspaced(character) for character in word):
                words.extend(_chinese_words(word, truth.key))
            else:
                words.extend(WORD.findall(word))
    return words


def _chinese_words(run: str, key: str) -> list[str]:
    if key and key in run:
        before, _, after = run.partition(key)
        return [*_chinese_words(before, ""), key, *_chinese_words(after, "")]
    return [run[start:start + 2] for start in range(0, len(run), 2) if run[start:start + 2]]


def read_all(truths: Iterable[Truth], read: Callable[[Image.Image], ReadResult], progress: bool = True,
             description: str = "reading text") -> list[ReadResult]:
    """`read` applied to every truth's image, in order."""
    truths = list(truths)
    results = []
    for truth in progress_bar(truths, total=len(truths), unit="image", desc=description, disable=not progress):
        with Image.open(truth.path) as image:
            results.append(read(image.convert("RGB")))
    return results


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character each."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for row, character in enumerate(first, start=1):
        current = [row]
        for column, other in enumerate(second, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1,
                               previous[column - 1] + (character != other)))
        previous = current
    return previous[-1]


_SPACE = re.compile(r"\s+")


def _without_space(text: str) -> str:
    return _SPACE.sub("", text)

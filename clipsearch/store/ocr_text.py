"""Text read from an image (clipsearch.model.ocr), as the item keeps it in its metadata.

    ocr_text   the lines found, one per line (absent where none were: `{"key": "ocr_text",
               "exists": true}` keeps the images that show text): searched by keyword and hybrid
               search with the caption (clipsearch.store.keywords), and by filters
               ({"key": "ocr_text", "match": {"text": "invoice"}}, clipsearch.store.filters)
    ocr        {"engine": "rapidocr 1.4.4 (…)", "lines": [{"text", "box", "score"}, …]}: each line's
               box (four corners in the image's pixels) and confidence, and `spaced` where the
               reader put back spaces the recogniser dropped (clipsearch.model.ocr); or, for an
               image whose text could not be read, {"engine", "problem"} and no `ocr_text`

They are metadata like any other, so a bundle holding them needs nothing new to store, copy,
compact or serve them; the keys are reserved: a source's own `ocr_text` or `ocr` metadata is
replaced when its image is read.

A hit shows the lines that hold the words of its query (`matching_lines`), as
clipsearch.store.scripts.holds matches them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.model.ocr import TextReader
from clipsearch.store.scripts import WORD, holds, is_unspaced
from clipsearch.util.images import decode_image

OCR_TEXT = "ocr_text"
OCR = "ocr"
KEYS = (OCR_TEXT, OCR)

_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def ocr_metadata(engine: str, lines: Sequence[Mapping[str, Any]], problem: str | None = None) -> dict[str, Any]:
    """The metadata of an image whose text was read by `engine`: its `lines` (dicts of text, box
    and score), or the `problem` that kept it from being read."""
    if problem is not None:
        return {OCR: {"engine": engine, "problem": problem}}
    record = {OCR: {"engine": engine, "lines": list(lines)}}
    return {OCR_TEXT: "\n".join(str(line["text"]) for line in lines), **record} if lines else record


def read_image_text(reader: TextReader, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """The OCR metadata of an image file's bytes, read by `reader` (decoded anew: a model's decode may
    be a reduced JPEG draft, too small for small print)."""
    found = reader.read(decode_image(data, max_pixels, draft_size=reader.config.max_side))
    return ocr_metadata(reader.description, [line.as_dict() for line in found.lines], found.problem)


def with_ocr(extra: Mapping[str, Any], ocr: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` with its OCR keys replaced by those of `ocr` (from `ocr_metadata`)."""
    return {**without_ocr(extra), **ocr}


def without_ocr(extra: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in extra.items() if name not in KEYS}


def ocr_part(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Only the OCR keys of `extra` (empty for an image never read)."""
    return {name: extra[name] for name in KEYS if name in extra}


def ocr_problem(extra: Mapping[str, Any]) -> str | None:
    """Why the image's text could not be read, or None."""
    record = extra.get(OCR)
    if isinstance(record, Mapping) and isinstance(record.get("problem"), str):
        return str(record["problem"])
    return None


def ocr_lines(extra: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    record = extra.get(OCR)
    if not isinstance(record, Mapping) or not isinstance(record.get("lines"), list):
        return []
    return [line for line in record["lines"] if isinstance(line, Mapping) and isinstance(line.get("text"), str)]


def keyword_body(extra: Mapping[str, Any]) -> str:
    """What of the read text is searched by keyword: the text as read; each line's `spaced` form;
    and where a word runs into a number without a space ("Invoice2024"), that line again with the
    two apart."""
    text = extra.get(OCR_TEXT)
    if not isinstance(text, str) or not text:
        return ""
    spaced = [str(line["spaced"]) for line in ocr_lines(extra) if line.get("spaced")]
    lines = [text, *spaced]
    for line in [*text.splitlines(), *spaced]:
        split = _LETTER_DIGIT.sub(" ", line)
        if split != line:
            lines.append(split)
    return "\n".join(lines)


def readable_text(extra: Mapping[str, Any]) -> str:
    """The read text as the text tower embeds it in a fused bundle (clipsearch.index.fusion): each
    line with the spaces the recogniser dropped put back; empty where none was read."""
    lines = ocr_lines(extra)
    if not lines:
        return str(extra.get(OCR_TEXT) or "").strip()
    return "\n".join(str(line.get("spaced") or line["text"]) for line in lines).strip()


def query_words(text: str) -> list[str]:
    """The words of a query looked for in the lines, lowercased, each once; a run of a script written
    without spaces longer than two characters (北京的发票) also as its overlapping pairs, as keyword
    search looks for it."""
    words = []
    for word in WORD.findall(text.lower()):
        words.append(word)
        if len(word) > 2 and all(is_unspaced(character) for character in word):
            words.extend(word[start:start + 2] for start in range(len(word) - 1))
    return list(dict.fromkeys(words))


def matching_lines(extra: Mapping[str, Any], words: Sequence[str]) -> list[dict[str, Any]]:
    """The item's lines that hold any of `words` (from `query_words`), each as stored plus `words`:
    those it holds, in the query's order."""
    matches = []
    for line in ocr_lines(extra):
        forms = [str(line["text"]), str(line.get("spaced") or "")]
        held = [word for word in words if any(holds(form, word) for form in forms)]
        if held:
            matches.append({**line, "words": held})
    return matches


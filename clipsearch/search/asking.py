"""A question asked about each image a search returns (`ask`), and optionally a filter on the answer
(`ask_filter`: "yes" keeps the results the model answered "yes" about).

The question is checked before the search runs, so a bad one costs nothing. Every image result of
the page is answered in one go through the question-answering model's own batcher, so a page of
20 is a few batched forward passes, not 20 requests. Text results have no picture to ask about: they
get no answer, and a filter drops them, as it drops an image whose file no longer decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from clipsearch.errors import ClipSearchError, InvalidQuery
from clipsearch.modality import Modality
from clipsearch.model.vqa import Answer, AskService
from clipsearch.store.collection import Hit


@dataclass(frozen=True)
class HitQuestion:
    text: str
    keep: str | None = None
    """Keep only the results whose answer is this (case and spaces aside), such as "yes"."""

    @classmethod
    def checked(cls, asker: AskService, question: str, keep: str | None, k: int) -> HitQuestion:
        """The question as asked; InvalidQuery naming `ask`, `ask_filter` or `k` when it cannot be."""
        text = asker.check(question, "ask")
        if k > asker.config.max_hits:
            raise InvalidQuery("k", f"a search with ask returns at most {asker.config.max_hits} results, each "
                                    f"answered by the model (CLIPSEARCH_VQA_MAX_HITS); got {k}")
        wanted = None if keep is None else normalised(keep)
        if keep is not None and not wanted:
            raise InvalidQuery("ask_filter", "must not be empty: give the answer to keep, such as 'yes'")
        return cls(text, wanted)


@dataclass(frozen=True)
class AskedHits:
    question: str
    model: str
    """The question-answering model that answered."""
    hits: list[Hit]
    """The results kept: all of them without a filter, else those whose answer passed it."""
    answers: dict[int, Answer]
    """Each answered result's answer, by item id."""
    dropped: int
    """Results the filter dropped."""


def normalised(answer: str) -> str:
    return " ".join(answer.lower().split())


def answer_hits(asker: AskService, question: HitQuestion, hits: Sequence[Hit],
                read_image: Callable[[int], Image.Image]) -> AskedHits:
    """Answer `question` about each image hit (read with `read_image`, by item id), then filter."""
    images: dict[int, Image.Image] = {}
    for hit in hits:
        if hit.item.modality is Modality.IMAGE:
            try:
                images[hit.item.id] = read_image(hit.item.id)
            except ClipSearchError:  # the file went away or no longer decodes since it was indexed
                continue
    answers = dict(zip(images, asker.ask(list(images.values()), question.text, "ask"), strict=True))
    model = asker.model().description
    if question.keep is None:
        return AskedHits(question.text, model, list(hits), answers, 0)
    wanted = normalised(question.keep)
    kept = [hit for hit in hits if hit.item.id in answers and normalised(answers[hit.item.id].text) == wanted]
    return AskedHits(question.text, model, kept, answers, len(hits) - len(kept))

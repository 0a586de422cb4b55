"""A question asked about each image a search returns, and a filter on its answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from PIL import Image

from clipsearch.config import VqaConfig
from clipsearch.errors import InvalidQuery, ItemNotFound
from clipsearch.modality import Modality
from clipsearch.model.vqa import OFFLINE_VQA_MODEL, AskService, load_answerer
from clipsearch.search.asking import HitQuestion, answer_hits
from clipsearch.search.service import SearchService
from clipsearch.store.collection import Hit

QUESTION = "is there a red circle?"


@pytest.fixture(scope="module")
def asker() -> Iterator[AskService]:
    service = AskService(VqaConfig(model=OFFLINE_VQA_MODEL, device="cpu", max_hits=12))
    yield service
    service.close()


def mixed_hits(service: SearchService) -> list[Hit]:
    """Image and text results of one search each, interleaved."""
    images = service.search_text("a photo", Modality.IMAGE, 6).hits
    texts = service.search_text("a photo", Modality.TEXT, 2).hits
    return [*images[:3], *texts, *images[3:]]


def read(service: SearchService):  # type: ignore[no-untyped-def]
    return lambda item_id: service.collection.read_image(item_id, "ask")


def test_every_image_hit_is_answered_as_one_by_one_questions_are(asker: AskService, service: SearchService) -> None:
    hits = mixed_hits(service)
    asked = answer_hits(asker, HitQuestion(QUESTION), hits, read(service))
    reference = load_answerer(VqaConfig(model=OFFLINE_VQA_MODEL, device="cpu"))
    images = [hit for hit in hits if hit.item.modality is Modality.IMAGE]
    assert set(asked.answers) == {hit.item.id for hit in images} and asked.hits == hits and asked.dropped == 0
    for hit in images:
        alone = reference.ask([(service.collection.read_image(hit.item.id), QUESTION)])[0]
        assert asked.answers[hit.item.id].text == alone.text
        assert asked.answers[hit.item.id].score == pytest.approx(alone.score, rel=1e-4)
    assert asked.question == QUESTION and asked.model == "tiny-blip-vqa (random weights, seed 0)"


def test_a_filter_keeps_exactly_the_hits_with_that_answer(asker: AskService, service: SearchService) -> None:
    hits = mixed_hits(service)
    answers = answer_hits(asker, HitQuestion(QUESTION), hits, read(service)).answers
    wanted = next(iter(answers.values())).text
    kept = answer_hits(asker, HitQuestion(QUESTION, wanted.upper().strip()), hits, read(service))
    expected = [hit for hit in hits if hit.item.id in answers and answers[hit.item.id].text == wanted]
    assert kept.hits == expected and expected
    assert kept.dropped == len(hits) - len(expected)  # the text hits among them: they have no picture to ask about


def test_an_image_whose_file_is_gone_gets_no_answer_and_is_dropped_by_a_filter(asker: AskService,
                                                                              service: SearchService) -> None:
    hits = service.search_text("a photo", Modality.IMAGE, 3).hits
    gone = hits[1].item.id

    def reading(item_id: int) -> Image.Image:
        if item_id == gone:
            raise ItemNotFound(item_id, "ask", "its image file no longer decodes")
        return service.collection.read_image(item_id, "ask")

    asked = answer_hits(asker, HitQuestion(QUESTION), hits, reading)
    assert gone not in asked.answers and len(asked.answers) == 2 and asked.hits == hits
    some_answer = asked.answers[hits[0].item.id].text
    filtered = answer_hits(asker, HitQuestion(QUESTION, some_answer), hits, reading)
    assert hits[1] not in filtered.hits


@pytest.mark.parametrize(("question", "keep", "k", "field"), [
    ("", None, 5, "ask"), ("这里有猫吗", None, 5, "ask"), (QUESTION, None, 13, "k"), (QUESTION, "  ", 5, "ask_filter"),
])
def test_a_question_that_cannot_be_asked_is_refused_before_the_search(asker: AskService, question: str,
                                                                     keep: str | None, k: int, field: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        HitQuestion.checked(asker, question, keep, k)
    assert refused.value.field == field


def test_a_checked_question_is_tidied_and_its_filter_lowercased(asker: AskService) -> None:
    checked = HitQuestion.checked(asker, "  is it  red? ", " Yes ", 12)
    assert checked == replace(HitQuestion("is it red?"), keep="yes")

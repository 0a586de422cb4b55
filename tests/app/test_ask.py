"""/ask, /ask/image and a search's `ask` over HTTP, answered by the tiny BLIP."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.main import create_app
from app.settings import Settings
from clipsearch.client import ClipSearchAPIError, ClipSearchClient, Query
from clipsearch.config import VqaConfig
from clipsearch.modality import Modality
from clipsearch.model.vqa import OFFLINE_VQA_MODEL, Answerer, load_answerer
from clipsearch.store.bundle import Bundle
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import LIMITS, serve

QUESTION = "is there a red circle?"
MODEL = "tiny-blip-vqa (random weights, seed 0)"


@pytest.fixture(scope="module")
def asking(bundle_path: Path) -> Iterator[tuple[str, Any]]:
    """A server whose question-answering model is the tiny BLIP; yields its URL and its state."""
    settings = Settings(bundle_path=bundle_path, device="cpu", vqa_model=OFFLINE_VQA_MODEL, vqa_max_hits=8,
                        vqa_max_question_chars=80, **LIMITS)  # type: ignore[arg-type]
    app = create_app(settings)
    with serve(settings, app) as url:
        yield url, app.state.server


@pytest.fixture()
def http(asking: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=asking[0], timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference() -> Answerer:
    """The same model, loaded here outside the server, asked one question at a time."""
    return load_answerer(VqaConfig(model=OFFLINE_VQA_MODEL, device="cpu"))


def stored_image(bundle: Bundle, item_id: int) -> Image.Image:
    item = bundle.items.get(item_id)
    assert item is not None
    with Image.open(item.uri) as opened:
        return opened.convert("RGB")


def image_ids(bundle: Bundle) -> list[int]:
    return [item.id for item in bundle.items if item.modality is Modality.IMAGE]


def text_id(bundle: Bundle) -> int:
    return next(item.id for item in bundle.items if item.modality is Modality.TEXT)


def b64(image: Image.Image) -> str:
    return base64.b64encode(image_bytes(image)).decode()


def test_the_model_loads_on_the_first_question_and_answers_as_it_does_alone(
        asking: tuple[str, Any], http: httpx.Client, bundle: Bundle, reference: Answerer) -> None:
    state = asking[1]
    assert state.answers.loaded is None
    item = image_ids(bundle)[0]
    body = http.post("/ask", json={"item_id": item, "question": QUESTION}).json()
    assert state.answers.loaded is not None
    expected = reference.ask([(stored_image(bundle, item), QUESTION)])[0]
    assert (body["answer"], body["model"]) == (expected.text, MODEL)
    assert body["score"] == pytest.approx(expected.score, rel=1e-4) and body["took_ms"] > 0


def test_an_upload_and_an_inline_image_get_the_same_answer(http: httpx.Client, reference: Answerer) -> None:
    uploaded = http.post("/ask/image", files={"file": ("a.png", image_bytes(noise_image(2)))},
                         data={"question": "what colour is it?"}).json()
    inline = http.post("/ask", json={"image_b64": b64(noise_image(2)), "question": "what colour is it?"}).json()
    assert uploaded["answer"] == inline["answer"] == reference.ask([(noise_image(2), "what colour is it?")])[0].text


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"item_id": 0, "question": ""}, "question", "empty"),
    ({"item_id": 0, "question": "why " * 30}, "question", "at most 80"),
    ({"item_id": 0, "question": "图片里有几只猫?"}, "question", "English"),
    ({"image_b64": base64.b64encode(b"not an image").decode(), "question": QUESTION}, "image_b64", ""),
    ({"image_b64": b64(noise_image(1)), "item_id": 0, "question": QUESTION}, "body", "exactly one"),
    ({"item_id": 0}, "question", ""),
])
def test_a_bad_question_or_image_is_refused_naming_the_field(http: httpx.Client, body: dict[str, Any],
                                                             field: str, reason: str) -> None:
    response = http.post("/ask", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and reason in response.json()["reason"]


def test_a_text_item_has_no_picture_to_ask_about(http: httpx.Client, bundle: Bundle) -> None:
    response = http.post("/ask", json={"item_id": text_id(bundle), "question": QUESTION})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "item_id" and "not an image" in response.json()["reason"]


def test_a_broken_upload_is_refused_naming_the_file(http: httpx.Client) -> None:
    response = http.post("/ask/image", files={"file": ("a.png", b"not an image")}, data={"question": QUESTION})
    assert response.status_code == 422 and response.json()["field"] == "file"


def test_a_search_with_ask_answers_every_image_result(http: httpx.Client, bundle: Bundle,
                                                      reference: Answerer) -> None:
    plain = http.post("/search/text", json={"text": "a photo", "k": 6}).json()
    body = http.post("/search/text", json={"text": "a photo", "k": 6, "ask": QUESTION}).json()
    assert [hit["id"] for hit in body["results"]] == [hit["id"] for hit in plain["results"]]
    assert body["asked"] == {"question": QUESTION, "model": MODEL, "answered": 6, "dropped": 0}
    for hit in body["results"]:
        expected = reference.ask([(stored_image(bundle, hit["id"]), QUESTION)])[0]
        assert hit["answer"] == expected.text and hit["answer_score"] == pytest.approx(expected.score, rel=1e-4)
    assert plain["results"][0]["answer"] is None and plain["asked"] is None


def test_ask_filter_keeps_the_results_with_that_answer_and_counts_the_others(http: httpx.Client) -> None:
    answered = http.post("/search/text", json={"text": "a photo", "k": 8, "ask": QUESTION}).json()["results"]
    wanted = answered[0]["answer"]
    body = http.post("/search/text", json={"text": "a photo", "k": 8, "ask": QUESTION,
                                           "ask_filter": wanted.upper()}).json()
    assert [hit["id"] for hit in body["results"]] == [hit["id"] for hit in answered if hit["answer"] == wanted]
    assert body["asked"]["dropped"] == 8 - len(body["results"]) and body["asked"]["answered"] == 8


def test_composed_and_upload_searches_take_ask_too(http: httpx.Client, bundle: Bundle) -> None:
    composed = http.post("/search", json={"queries": [{"item_id": image_ids(bundle)[0]}], "k": 3,
                                          "ask": QUESTION, "explain": True}).json()
    assert all(hit["answer"] is not None and hit["shares"] for hit in composed["results"])
    uploaded = http.post("/search/image", files={"file": ("q.png", image_bytes(noise_image(4)))},
                         data={"k": "3", "ask": QUESTION}).json()
    assert uploaded["asked"]["answered"] == 3 and all(hit["answer"] is not None for hit in uploaded["results"])


@pytest.mark.parametrize(("body", "field"), [
    ({"text": "a photo", "k": 9, "ask": QUESTION}, "k"),
    ({"text": "a photo", "ask_filter": "yes"}, "ask_filter"),
    ({"text": "a photo", "ask": "  "}, "ask"),
    ({"text": "a photo", "ask": "有没有狗"}, "ask"),
    ({"text": "a photo", "k": 5, "ask": QUESTION, "ask_filter": ""}, "ask_filter"),
])
def test_a_search_with_a_bad_question_is_refused_naming_the_field(http: httpx.Client, body: dict[str, Any],
                                                                  field: str) -> None:
    response = http.post("/search/text", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_the_python_client_asks_and_searches_with_ask(asking: tuple[str, Any], bundle: Bundle) -> None:
    item = image_ids(bundle)[1]
    with ClipSearchClient(asking[0], timeout=60) as client:
        answer = client.ask(item, QUESTION)
        assert answer.model == MODEL and 0 < answer.score <= 1
        assert client.ask(image_bytes(noise_image(5)), QUESTION).answer == client.ask(
            image_bytes(noise_image(5)), "  is there a red  circle? ").answer
        found = client.search_text("a photo", k=4, ask=QUESTION)
        assert found.asked is not None and found.asked.answered == 4
        assert all(hit.answer is not None and hit.answer_score is not None for hit in found.results)
        kept = client.search([Query(text="a photo")], k=4, ask=QUESTION, ask_filter=found.results[0].answer)
        assert kept.asked is not None and kept.asked.dropped == 4 - len(kept.results) and kept.results
        by_image = client.search_image(image_bytes(noise_image(6)), k=2, ask=QUESTION)
        assert by_image.asked is not None and by_image.asked.answered == 2
        with pytest.raises(ClipSearchAPIError) as refused:
            client.ask(item, "")
        assert refused.value.status_code == 422 and refused.value.field == "question"


def test_without_the_vqa_extra_a_question_answers_503_naming_it(bundle_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    settings = Settings(bundle_path=bundle_path, device="cpu", vqa_model=OFFLINE_VQA_MODEL)
    with serve(settings) as url:
        response = httpx.post(f"{url}/ask", json={"image_b64": b64(noise_image(1)), "question": QUESTION}, timeout=30)
    assert response.status_code == 503 and "[vqa] extra" in response.json()["reason"]

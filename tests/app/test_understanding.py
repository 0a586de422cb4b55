"""/classify, /explain, explained composed searches and /caption over HTTP."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.main import create_app
from app.settings import Settings
from clipsearch.client import ClipSearchAPIError, ClipSearchClient, Query
from clipsearch.config import CaptionConfig
from clipsearch.modality import Modality
from clipsearch.model.captions import load_captioner
from clipsearch.model.encoder import ClipEncoder
from clipsearch.store.bundle import Bundle
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import LIMITS, serve

LABELS = ["a cat", "a dog", "a boat"]


@pytest.fixture(scope="module")
def captioning(bundle_path: Path) -> Iterator[tuple[str, object]]:
    """A server whose caption model is the tiny CoCa; yields its URL and its state."""
    # Beam search: deterministic, so a caption's words can be checked against the model's own.
    settings = Settings(bundle_path=bundle_path, device="cpu", caption_model="tiny-coca", caption_pretrained="",
                        caption_generation="beam_search", caption_max_tokens=10, max_labels=4, max_explained=2,
                        **LIMITS)  # type: ignore[arg-type]
    app = create_app(settings)
    with serve(settings, app) as url:
        yield url, app.state.server


@pytest.fixture()
def http(captioning: tuple[str, object]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=captioning[0], timeout=60) as client:
        yield client


def image_ids(bundle: Bundle) -> list[int]:
    return [item.id for item in bundle.items if item.modality is Modality.IMAGE]


def b64(image: Image.Image) -> str:
    return base64.b64encode(image_bytes(image)).decode()


def test_classify_gives_every_label_a_probability_best_first(http: httpx.Client, bundle: Bundle) -> None:
    body = http.post("/classify", json={"item_id": image_ids(bundle)[0], "labels": LABELS}).json()
    probabilities = [label["probability"] for label in body["labels"]]
    assert sorted(label["label"] for label in body["labels"]) == sorted(LABELS)
    assert sum(probabilities) == pytest.approx(1.0) and probabilities == sorted(probabilities, reverse=True)
    assert body["calibration"] == "softmax (logit_scale)" and body["multi_label"] is False


def test_an_item_an_inline_image_and_an_upload_classify_alike(http: httpx.Client) -> None:
    image = noise_image(4)
    inline = http.post("/classify", json={"image_b64": b64(image), "labels": LABELS}).json()
    uploaded = http.post("/classify/image", files={"file": ("a.png", image_bytes(image))},
                         data={"labels": LABELS}).json()
    assert [(label["label"], pytest.approx(label["probability"])) for label in inline["labels"]] == \
        [(label["label"], label["probability"]) for label in uploaded["labels"]]


def test_multi_label_probabilities_are_independent(http: httpx.Client, bundle: Bundle) -> None:
    item = image_ids(bundle)[1]
    both = http.post("/classify", json={"item_id": item, "labels": LABELS, "multi_label": True}).json()
    one = http.post("/classify", json={"item_id": item, "labels": LABELS[:1], "multi_label": True}).json()
    by_label = {label["label"]: label["probability"] for label in both["labels"]}
    assert by_label["a cat"] == pytest.approx(one["labels"][0]["probability"])


@pytest.mark.parametrize(("body", "field"), [
    ({"labels": ["a", "b"]}, "body"),
    ({"item_id": 0, "labels": []}, "labels"),
    ({"item_id": 0, "labels": ["a", "b", "c", "d", "e"]}, "labels"),
    ({"item_id": 0, "labels": ["a", " "]}, "labels[1]"),
    ({"item_id": 0, "labels": ["boat", "Boat"]}, "labels[1]"),
    ({"item_id": 0, "labels": ["a"], "templates": ["no slot"]}, "templates[0]"),
    ({"image_b64": "not base64!", "labels": ["a"]}, "image_b64"),
    ({"image_b64": base64.b64encode(b"not an image").decode(), "labels": ["a"]}, "image_b64"),
])
def test_bad_classify_requests_are_refused_naming_the_field(http: httpx.Client, body: dict[str, object],
                                                            field: str) -> None:
    response = http.post("/classify", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_classifying_a_text_item_is_refused(http: httpx.Client, bundle: Bundle) -> None:
    text_id = next(item.id for item in bundle.items if item.modality is Modality.TEXT)
    response = http.post("/classify", json={"item_id": text_id, "labels": ["a"]})
    assert response.status_code == 422 and response.json()["field"] == "item_id"
    assert http.post("/classify", json={"item_id": 10**9, "labels": ["a"]}).status_code == 404


def test_an_explained_composed_search_gives_shares_that_add_up_to_each_score(http: httpx.Client,
                                                                             bundle: Bundle) -> None:
    queries = [{"text": "a red square"}, {"item_id": image_ids(bundle)[2], "weight": 0.5},
               {"text": "people", "weight": -0.3}, {"text": "ignored", "weight": 0}]
    results = http.post("/search", json={"queries": queries, "k": 4, "explain": True}).json()["results"]
    assert len(results) == 4
    for result in results:
        assert len(result["shares"]) == 4 and result["shares"][3] == 0.0
        assert sum(result["shares"]) == pytest.approx(result["score"], abs=1e-5)
    plain = http.post("/search", json={"queries": queries, "k": 4}).json()["results"]
    assert all(result["shares"] is None for result in plain)


def test_explain_returns_a_patch_grid_and_an_overlay_per_item(http: httpx.Client, bundle: Bundle) -> None:
    items = image_ids(bundle)[:2]
    body = http.post("/explain", json={"queries": [{"text": "a red square"}], "item_ids": items}).json()
    assert body["method"] == "value-path" and [result["item_id"] for result in body["results"]] == items
    for result in body["results"]:
        assert len(result["grid"]) == 4 and all(len(row) == 4 for row in result["grid"])
        overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_png_b64"])))
        assert overlay.format == "PNG"
    without = http.post("/explain", json={"queries": [{"text": "x"}], "item_ids": items[:1], "overlay": False})
    assert without.json()["results"][0]["overlay_png_b64"] is None


@pytest.mark.parametrize(("body", "field"), [
    ({"queries": [{"text": "x"}], "item_ids": []}, "item_ids"),
    ({"queries": [{"text": "x"}], "item_ids": [0, 1, 2]}, "item_ids"),
    ({"queries": [], "item_ids": [0]}, "queries"),
    ({"queries": [{"text": "x"}], "item_ids": [-1]}, "item_ids"),
])
def test_bad_explain_requests_are_refused_naming_the_field(http: httpx.Client, body: dict[str, object],
                                                           field: str) -> None:
    response = http.post("/explain", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_the_caption_model_loads_on_the_first_caption_request(captioning: tuple[str, object], http: httpx.Client,
                                                              bundle: Bundle) -> None:
    state = captioning[1]
    assert state.captions.loaded is None  # type: ignore[attr-defined]
    item = bundle.items.get(image_ids(bundle)[0])
    assert item is not None
    body = http.post("/caption", json={"item_id": item.id}).json()
    assert body["model"] == "tiny-coca (random weights, seed 0)"
    assert state.captions.loaded is not None  # type: ignore[attr-defined]
    uploaded = http.post("/caption/image", files={"file": ("a.png", image_bytes(noise_image(2)))}).json()
    inline = http.post("/caption", json={"image_b64": b64(noise_image(2))}).json()
    # The same model loaded here, outside the server, captions the same pictures with the same words.
    reference = load_captioner(CaptionConfig(model="tiny-coca", pretrained=None, device="cpu",
                                             generation="beam_search", max_tokens=10))
    with Image.open(item.uri) as stored:
        expected = reference.caption_images([stored.convert("RGB"), noise_image(2)])
    assert body["caption"] == expected[0] and uploaded["caption"] == inline["caption"] == expected[1]
    assert expected[0] != expected[1] and all(len(caption.split()) >= 2 for caption in expected)


def test_a_bad_caption_request_is_refused_naming_the_field(http: httpx.Client) -> None:
    response = http.post("/caption/image", files={"file": ("a.png", b"not an image")})
    assert response.status_code == 422 and response.json()["field"] == "file"
    response = http.post("/caption", json={"image_b64": b64(noise_image(1)), "item_id": 0})
    assert response.status_code == 422


def test_without_the_caption_extra_caption_answers_503_naming_it(bundle_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch.model import captions

    monkeypatch.setattr(captions, "transformers_available", lambda: False)
    settings = Settings(bundle_path=bundle_path, device="cpu", caption_model="tiny-coca", caption_pretrained="")
    with serve(settings) as url:
        response = httpx.post(f"{url}/caption", json={"image_b64": b64(noise_image(1))}, timeout=30)
    assert response.status_code == 503 and "[caption] extra" in response.json()["reason"]


def test_the_python_client_classifies_explains_and_captions(captioning: tuple[str, object], bundle: Bundle,
                                                           encoder: ClipEncoder) -> None:
    image = image_ids(bundle)[0]
    with ClipSearchClient(captioning[0], timeout=60) as client:
        labels = client.classify(image, LABELS)
        assert sum(label.probability for label in labels) == pytest.approx(1.0)
        several = client.classify(image_bytes(noise_image(3)), LABELS, multi_label=True)
        # What the server answered, label for label, best first.
        answered = httpx.post(f"{captioning[0]}/classify", json={"image_b64": b64(noise_image(3)), "labels": LABELS,
                                                                 "multi_label": True}, timeout=60).json()["labels"]
        assert [(label.label, label.probability, label.cosine) for label in several] == \
            [(label["label"], pytest.approx(label["probability"]), pytest.approx(label["cosine"]))
             for label in answered]
        # Every label scored on its own, a sigmoid each against one generic prompt: two labels' log-odds
        # differ by the model's temperature times their cosines' difference.
        scale = float(encoder.model.logit_scale.detach().exp())
        first, last = several[0], several[-1]
        assert math.log(first.probability / (1 - first.probability)) - \
            math.log(last.probability / (1 - last.probability)) == \
            pytest.approx(scale * (first.cosine - last.cosine), rel=1e-4, abs=1e-4)
        found = client.search([Query(text="a photo"), Query(item_id=image, weight=0.5)], k=3, explain=True)
        assert all(sum(hit.shares or []) == pytest.approx(hit.score, abs=1e-5) for hit in found.results)
        heatmap = client.explain([Query(text="a photo")], [image])[0]
        assert heatmap.grid.shape == (4, 4) and heatmap.overlay_png is not None
        assert client.caption(image) == httpx.post(f"{captioning[0]}/caption", json={"item_id": image},
                                                   timeout=60).json()["caption"]
        with pytest.raises(ClipSearchAPIError) as refused:
            client.classify(image, [])
        assert refused.value.field == "labels"

"""Every bad input gets a 4xx JSON error naming the field and the reason; the server stays up."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import status_of
from app.settings import Settings
from clipsearch import errors
from clipsearch.client import ClipSearchAPIError, ClipSearchClient
from clipsearch.ingest.build import build
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.imagefiles import image_bytes, noise_image, png_declaring_size
from tests.support.serving import LIMITS, serve

PNG = image_bytes(noise_image(1))


def assert_error(response: httpx.Response, status: int, field: str | None, reason_part: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field
    assert reason_part in body["reason"]
    assert body["detail"] == (f"{field}: {body['reason']}" if field else body["reason"])


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"text": ""}, "text", "must not be empty"),
    ({"text": "   \n\t"}, "text", "must not be empty"),
    ({"text": "a\x00b"}, "text", "NUL"),
    ({"text": "x" * 2001}, "text", "at most 2000 characters"),
    ({"text": "dog", "k": 0}, "k", "greater than or equal to 1"),
    ({"text": "dog", "k": 51}, "k", "between 1 and 50"),
    ({"text": "dog", "k": "many"}, "k", "integer"),
    ({"text": "dog", "target": "smell"}, "target", "'image', 'text', 'video' or 'audio'"),
    ({"text": "dog", "target": "audio"}, "target", "the bundle has no audio items (it has: image, text)"),
    ({"text": "dog", "target": "video"}, "target", "no video items"),
    ({"k": 3}, "text", "Field required"),
    ({"text": "dog", "colour": "red"}, "colour", "Extra inputs"),
    ({"text": "dog", "mode": "semantic"}, "mode", "'vector', 'keyword' or 'hybrid'"),
    ({"text": "?!", "mode": "keyword"}, "text", "no letters or digits"),
    ({"text": "dog", "mode": "hybrid", "hybrid": {"vector_weight": 1.5}}, "hybrid.vector_weight", "less than or equal"),
    ({"text": "dog", "mode": "hybrid", "hybrid": {"method": "max"}}, "hybrid.method", "'rrf' or 'weighted'"),
])
def test_bad_text_searches_name_the_field(http: httpx.Client, body: dict[str, Any], field: str, reason: str) -> None:
    assert_error(http.post("/search/text", json=body), 422, field, reason)


def test_a_body_that_is_not_json_is_refused(http: httpx.Client) -> None:
    response = http.post("/search/text", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["reason"]


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file"),
    (b"just some text", "not an image in an accepted format"),
    (b"<html><body>no</body></html>", "not an image in an accepted format"),
    (image_bytes(noise_image(2, (64, 64)), "JPEG")[:300], "truncated"),
])
def test_uploads_that_are_not_whole_images_are_refused(http: httpx.Client, data: bytes, reason: str) -> None:
    assert_error(http.post("/search/image", files={"file": ("x.jpg", data)}), 422, "file", reason)
    assert_error(http.post("/embed/image", files={"file": ("x.jpg", data)}), 422, "file", reason)


def test_an_upload_without_a_file_names_the_missing_field(http: httpx.Client) -> None:
    assert_error(http.post("/search/image", data={"k": "3"}), 422, "file", "Field required")


def test_an_upload_over_the_size_limit_is_413(http: httpx.Client) -> None:
    response = http.post("/search/image", files={"file": ("big.png", b"\x89PNG" + b"\0" * 1_200_000)})
    assert response.status_code == 413 and "over the limit" in response.json()["reason"]


def test_a_chunked_body_over_the_size_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 100_000

    response = http.post("/search/text", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_an_image_over_the_pixel_limit_is_413_naming_the_field(http: httpx.Client) -> None:
    assert_error(http.post("/search/image", files={"file": ("bomb.png", png_declaring_size(2000, 2000))}),
                 413, "file", "pixels")


@pytest.mark.parametrize(("body", "status", "field", "reason"), [
    ({"queries": []}, 422, "queries", "at least one"),
    ({"queries": [{"text": "a", "weight": 0}, {"item_id": 1, "weight": 0}]}, 422, "queries", "all weights are zero"),
    ({"queries": [{"text": "same"}, {"text": "same", "weight": -1}]}, 422, "queries", "cancel"),
    ({"queries": [{"image_b64": "not base64!"}]}, 422, "queries[0].image_b64", "not valid base64"),
    ({"queries": [{"image_b64": "aGVsbG8="}]}, 422, "queries[0].image_b64", "not an image in an accepted format"),
    ({"queries": [{"text": "a", "item_id": 2}]}, 422, "queries[0]", "exactly one"),
    ({"queries": [{"weight": 1}]}, 422, "queries[0]", "exactly one"),
    ({"queries": [{"text": " "}]}, 422, "queries[0].text", "must not be empty"),
    ({"queries": [{"text": "a"}] * 5}, 422, "queries", "at most 4 terms"),
    ({"queries": [{"item_id": 999_999}]}, 404, "queries[0].item_id", "999999"),
    ({"queries": [{"text": "a"}, {"item_id": 999_999, "weight": 2}]}, 404, "queries[1].item_id", "no such item"),
    ({"queries": [{"text": "a"}], "k": 0}, 422, "k", "greater than or equal to 1"),
])
def test_bad_composed_queries_name_the_field(http: httpx.Client, body: dict[str, Any], status: int, field: str,
                                             reason: str) -> None:
    assert_error(http.post("/search", json=body), status, field, reason)


def test_an_infinite_weight_is_refused(http: httpx.Client) -> None:
    response = http.post("/search", content=b'{"queries": [{"text": "a", "weight": Infinity}]}',
                         headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_unknown_items_are_404(http: httpx.Client) -> None:
    assert_error(http.get("/items/123456"), 404, "id", "123456")
    assert_error(http.get("/items/123456/image"), 404, "id", "123456")
    assert http.get("/items/not-a-number").status_code == 422


def test_a_text_item_has_no_image(http: httpx.Client) -> None:
    assert_error(http.get("/items/30/image"), 422, "id", "is a text, not an image")


def test_the_client_raises_with_the_servers_field_and_reason(client: ClipSearchClient) -> None:
    with pytest.raises(ClipSearchAPIError) as raised:
        client.search_text("   ")
    assert raised.value.status_code == 422 and raised.value.field == "text"


def test_the_server_is_still_alive_after_every_error(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.post("/search/text", json={"text": "still here"}).status_code == 200


@pytest.fixture(scope="module")
def images_only_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("images_only")
    build(tiny_config(root / "bundle", images=make_image_corpus(root / "images", 5)))
    with serve(Settings(bundle_path=root / "bundle", device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        yield url


def test_a_target_the_bundle_lacks_is_refused_saying_what_it_has(images_only_url: str) -> None:
    response = httpx.post(f"{images_only_url}/search/text", json={"text": "dog", "target": "text"})
    assert_error(response, 422, "target", "no text items (it has: image)")
    assert httpx.post(f"{images_only_url}/search/text", json={"text": "dog"}).status_code == 200


def test_a_damaged_bundle_is_not_served_and_ready_says_why(bundle_path: Path, tmp_path: Path) -> None:
    import shutil

    damaged = Path(shutil.copytree(bundle_path, tmp_path / "damaged"))
    (damaged / "items.sqlite").write_bytes(b"oops" + (damaged / "items.sqlite").read_bytes()[4:])
    with serve(Settings(bundle_path=damaged, device="cpu")) as url:  # type: ignore[call-arg]
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503
        assert "items.sqlite" in ready.json()["reason"] and "sha256" in ready.json()["reason"]
        assert httpx.get(f"{url}/health").status_code == 200
        search = httpx.post(f"{url}/search/text", json={"text": "dog"})
        assert search.status_code == 503 and "items.sqlite" in search.json()["reason"]


def test_a_missing_bundle_is_not_served_and_ready_says_why(tmp_path: Path) -> None:
    with serve(Settings(bundle_path=tmp_path / "nowhere", device="cpu")) as url:  # type: ignore[call-arg]
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and "no bundle directory" in ready.json()["reason"]


def test_every_core_error_is_answered_with_the_status_its_docstring_draws() -> None:
    drawn = {}
    for line in (errors.__doc__ or "").splitlines():
        if match := re.match(r"^[\s│├└─]*([A-Z]\w+)\s+(\d{3}|—)", line):
            drawn[match.group(1)] = match.group(2)
    classes = {name: value for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.ClipSearchError)}
    assert set(drawn) == set(classes), "the drawing names every error class, and only those"
    for name, status in drawn.items():
        if status != "—":  # indexer-only errors never reach the server
            assert status_of(classes[name]) == int(status), name


def test_a_subclass_without_its_own_entry_takes_its_parents_status() -> None:
    class Unforeseen(errors.InvalidQuery):
        """Not in the table."""

    assert status_of(Unforeseen) == 422 and status_of(errors.ItemNotFound) == 404

"""Writes over HTTP: the admin key, adds of texts and images, replacement by key, edits, deletes
by id and by filter, every bad write refused naming its field, and durability across kill -9."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchAPIError, ClipSearchClient, NewImage, NewText
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import ADMIN, LIMITS, on_every_worker, serve, start_server_process


@pytest.fixture()
def live_bundle(bundle_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_path, tmp_path / "bundle"))


@pytest.fixture()
def writable(live_bundle: Path) -> Iterator[str]:
    settings = Settings(bundle_path=live_bundle, device="cpu", admin_key=ADMIN, **LIMITS)  # type: ignore[arg-type]
    with serve(settings) as url:
        yield url


def test_writes_are_refused_while_no_admin_key_is_set_naming_the_setting(http: httpx.Client) -> None:
    response = http.post("/items", json={"items": [{"text": "x"}]})
    assert response.status_code == 403
    assert response.json()["field"] == "X-Admin-Key" and "CLIPSEARCH_ADMIN_KEY" in response.json()["reason"]
    assert http.delete("/items/1").status_code == 403


def test_a_wrong_or_missing_admin_key_is_refused_and_the_api_key_never_writes(writable: str) -> None:
    for headers in ({}, {"X-Admin-Key": "guess"}, {"X-API-Key": ADMIN}):
        response = httpx.post(f"{writable}/items", json={"items": [{"text": "x"}]}, headers=headers)
        assert response.status_code == 403, headers
        assert response.json()["reason"] == "missing or wrong admin key"


def test_added_texts_and_images_are_found_at_once_and_replaced_by_key(writable: str) -> None:
    with ClipSearchClient(writable, admin_key=ADMIN) as client:
        [giraffe] = client.add_texts([NewText("a purple giraffe", "notes/giraffe", {"album": "zoo"})])
        hit = client.search_text("a purple giraffe", target="text", k=1).results[0]
        assert (hit.id, hit.text, hit.metadata) == (giraffe, "a purple giraffe", {"album": "zoo"})
        [again] = client.add_texts([NewText("a green giraffe", "notes/giraffe")])
        assert again == giraffe and client.item(giraffe)["text"] == "a green giraffe"
        picture = image_bytes(noise_image(321))
        [image_id] = client.add_images([NewImage(picture, "camera/1.png", "my picture", {"album": "zoo"})])
        found = client.search_image(picture, k=1, filter={"key": "album", "match": {"value": "zoo"}})
        assert found.ids == [image_id] and found.matched == 1
        assert httpx.get(f"{writable}/items/{image_id}/image").content == picture


def test_edits_change_only_what_is_given(writable: str) -> None:
    with ClipSearchClient(writable, admin_key=ADMIN) as client:
        image_id = client.search_text("a photo", k=1).ids[0]
        before = client.item(image_id)
        after = client.edit(image_id, metadata={"album": "edited"})
        assert after["metadata"] == {"album": "edited"} and after["caption"] == before["caption"]
        assert client.edit(image_id, caption=None)["caption"] is None
        with pytest.raises(ClipSearchAPIError) as refused:
            client.edit(image_id, text="an image has no text")
        assert refused.value.status_code == 422 and refused.value.field == "text"


def test_deletes_by_id_and_by_filter_remove_items_from_every_search(writable: str) -> None:
    with ClipSearchClient(writable, admin_key=ADMIN) as client:
        first = client.search_text("a photo", k=1).ids[0]
        first_is_numbered = "number" in client.item(first)["metadata"]
        assert client.delete([first, 10_000]) == [first]
        assert first not in client.search_text("a photo", k=50).ids
        with pytest.raises(ClipSearchAPIError) as gone:
            client.item(first)
        assert gone.value.status_code == 404
        deleted = client.delete(filter={"key": "number", "exists": True})
        assert len(deleted) == 10 - first_is_numbered and first not in deleted
        assert client.search_text("a photo", k=10, filter={"key": "number", "exists": True}).matched == 0
        assert httpx.delete(f"{writable}/items/{first}", headers={"X-Admin-Key": ADMIN}).status_code == 404


@pytest.mark.parametrize(("request_kwargs", "field"), [
    ({"json": {"items": []}}, "items"),
    ({"json": {"items": [{"text": ""}]}}, "items[0].text"),
    ({"json": {"items": [{"text": "x", "metadata": []}]}}, "items[0].metadata"),
    ({"json": {"items": [{"text": "x", "key": "a"}, {"text": "y", "key": "a"}]}}, "items[1].key"),
    ({"json": {"items": [{"text": "x", "color": "red"}]}}, "items[0].color"),
    ({"files": [("file", ("a.png", b"not an image", "image/png"))]}, "file[0]"),
    ({"files": [("file", ("a.png", image_bytes(noise_image(1)), "image/png"))], "data": {"metadata": "{bad"}},
     "metadata[0]"),
    ({"files": [("file", ("a.png", image_bytes(noise_image(1)), "image/png"))] * 2, "data": {"key": "only-one"}},
     "key"),
])
def test_a_bad_write_is_a_4xx_naming_the_field_and_changes_nothing(writable: str, request_kwargs: dict[str, object],
                                                                   field: str) -> None:
    before = httpx.get(f"{writable}/info").json()["counts"]
    response = httpx.post(f"{writable}/items", headers={"X-Admin-Key": ADMIN}, **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert httpx.get(f"{writable}/info").json()["counts"] == before


def test_an_acknowledged_write_survives_kill_9_of_the_server(live_bundle: Path) -> None:
    process, url = start_server_process(live_bundle)
    try:
        with ClipSearchClient(url, admin_key=ADMIN) as client:
            ids = client.add_texts([NewText(f"durable sentence {number}", f"durable/{number}") for number in range(5)])
            deleted = client.search_text("a photo", k=1).ids[0]
            client.delete([deleted])
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no checkpoint: only what was committed
        process.wait()
        process, url = start_server_process(live_bundle)
        with ClipSearchClient(url) as client:
            for number, item_id in enumerate(ids):
                assert client.item(item_id)["text"] == f"durable sentence {number}"
            assert client.search_text("durable sentence 3", target="text", k=1).ids == [ids[3]]
            assert deleted not in client.search_text("a photo", k=50).ids
    finally:
        process.kill()
        process.wait()


def test_a_write_through_one_worker_is_seen_by_every_worker(live_bundle: Path) -> None:
    process, url = start_server_process(live_bundle, CLIPSEARCH_SERVER_WORKERS="2")
    try:
        with ClipSearchClient(url, admin_key=ADMIN) as writer:
            [item_id] = writer.add_texts([NewText("a purple giraffe", "giraffe")])
        # Every worker must see the write at once (each checks the log's generation before every search).

        def finds_the_write(fresh: httpx.Client) -> None:
            response = fresh.post("/search/text", json={"text": "a purple giraffe", "target": "text", "k": 1})
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["id"] == item_id

        on_every_worker(url, 2, finds_the_write)
    finally:
        process.kill()
        process.wait()

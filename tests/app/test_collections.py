"""Collections over HTTP: every route under /collections/default/ answers as today's does, the
collections are listed, a collection not served is 404; and a collection's snapshot from the
running server, restored elsewhere with the indexer, holds the writes acknowledged before it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.resources import MB
from app.settings import Settings
from clipsearch.client import ClipSearchAPIError, ClipSearchClient, NewText, Query
from clipsearch.config import ModelRef
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.store.bundle import resident_bytes
from clipsearch.store.catalog import Catalog
from clipsearch.store.keys import KeyScope, create_key
from clipsearch.store.manifest import read_manifest
from indexer.cli import main
from tests.support.serving import ADMIN, serve


def test_a_snapshot_downloaded_from_the_server_restores_with_the_writes_made_before_it(
        bundle_path: Path, tmp_path: Path, encoder: ClipEncoder) -> None:
    bundle = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    with serve(Settings(bundle_path=bundle, device="cpu", admin_key=ADMIN)) as url, \
            ClipSearchClient(url, admin_key=ADMIN) as client:  # type: ignore[call-arg]
        written = client.add_texts([NewText("a note kept in the snapshot", key="note")])
        response = httpx.post(f"{url}/collections/default/snapshot", headers={"X-Admin-Key": ADMIN}, timeout=60)
        assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
        assert response.headers["content-disposition"].startswith('attachment; filename="default-')
        client.add_texts([NewText("a note written after it")])
    (tmp_path / "snapshot.tar").write_bytes(response.content)
    assert main(["restore", "--snapshot", str(tmp_path / "snapshot.tar"), "--bundle", str(tmp_path / "restored")]) == 0
    with opened_service(encoder, tmp_path / "restored") as restored:
        texts = {item.text for item in restored.collection.refresh().items.values()}
    assert texts == {"a note kept in the snapshot"} and restored.collection.item(written[0]).uri == "note"


def test_every_route_of_the_default_collection_answers_under_its_name_too(client: ClipSearchClient,
                                                                          server_url: str) -> None:
    with ClipSearchClient(server_url, collection="default") as named:
        assert named.search_text("a photo", k=5).ids == client.search_text("a photo", k=5).ids
        assert named.search([Query(item_id=3)], k=4).ids == client.search([Query(item_id=3)], k=4).ids
        assert named.item(3) == client.item(3)
        np.testing.assert_array_equal(named.embed_text("a dog"), client.embed_text("a dog"))
    image = httpx.get(f"{server_url}/collections/default/items/0/image")
    assert image.status_code == 200 and image.content == httpx.get(f"{server_url}/items/0/image").content
    [listed] = client.collections()
    assert listed["name"] == "default" and listed["counts"] == {"image": 30, "text": 25}


def test_a_collection_the_server_does_not_serve_is_404_naming_it(server_url: str) -> None:
    with ClipSearchClient(server_url, collection="holidays") as elsewhere, \
            pytest.raises(ClipSearchAPIError) as missing:
        elsewhere.search_text("a photo")
    assert missing.value.status_code == 404 and missing.value.field == "collection"
    assert "this server serves one bundle, 'default'" in str(missing.value.reason)


def test_a_snapshot_of_a_collection_not_served_is_404_and_needs_the_admin_key(bundle_path: Path) -> None:
    with serve(Settings(bundle_path=bundle_path, device="cpu", admin_key=ADMIN)) as url:  # type: ignore[call-arg]
        missing = httpx.post(f"{url}/collections/holidays/snapshot", headers={"X-Admin-Key": ADMIN})
        assert missing.status_code == 404 and missing.json()["field"] == "collection"
        assert "this server serves one bundle, 'default'" in missing.json()["reason"]
        without = httpx.post(f"{url}/collections/default/snapshot")
        assert without.status_code == 403 and without.json()["field"] == "X-Admin-Key"


@pytest.fixture()
def data_dir(bundle_path: Path, tmp_path: Path) -> Path:
    """A folder of collections whose default is the test bundle."""
    shutil.copytree(bundle_path, tmp_path / "collections" / "default")
    return tmp_path / "collections"


def collections_settings(data_dir: Path, **options: Any) -> Settings:
    return Settings(data_dir=data_dir, device="cpu", admin_key=ADMIN, reload_poll_s=0.1,  # type: ignore[call-arg]
                    **options)


def test_a_collection_is_made_filled_and_searched_apart_from_the_others_then_dropped(data_dir: Path) -> None:
    with serve(collections_settings(data_dir)) as url, ClipSearchClient(url, admin_key=ADMIN) as admin:
        made = admin.create_collection("holidays")
        assert made["ready"] and made["model"] == admin.info()["model"] + " (random weights, seed 0)"
        assert made["counts"] == {} and (data_dir / "holidays" / "manifest.json").is_file()
        again = httpx.put(f"{url}/collections/holidays", headers={"X-Admin-Key": ADMIN})
        assert again.status_code == 200 and again.json()["name"] == "holidays"  # made once; asking again is no error
        other_model = httpx.put(f"{url}/collections/holidays", json={"model": "tiny-multilingual"},
                                headers={"X-Admin-Key": ADMIN})
        assert other_model.status_code == 409 and "with the model tiny" in other_model.json()["reason"]
        with ClipSearchClient(url, admin_key=ADMIN, collection="holidays") as holidays:
            [added] = holidays.add_texts([NewText("a beach at sunset", key="beach")])
            assert [hit.text for hit in holidays.search_text("sunset", target="text", k=5).results] == \
                ["a beach at sunset"]
            assert holidays.info()["counts"] == {"text": 1} and holidays.info()["collection"] == "holidays"
            default_texts = {hit.text for hit in admin.search_text("sunset", target="text", k=50).results}
            assert "a beach at sunset" not in default_texts and len(default_texts) == 25
            listed = {entry["name"]: entry for entry in admin.collections()}
            assert list(listed) == ["default", "holidays"]
            assert listed["holidays"]["counts"] == {"text": 1} and listed["default"]["counts"] == {"image": 30,
                                                                                                 "text": 25}
            assert listed["default"]["memory_bytes"] > listed["holidays"]["memory_bytes"] > 0
            admin.drop_collection("holidays")
            with pytest.raises(ClipSearchAPIError) as gone:
                holidays.item(added)
        assert gone.value.status_code == 404 and gone.value.field == "collection"
        assert not (data_dir / "holidays").exists() and [entry["name"] for entry in admin.collections()] == ["default"]
        with pytest.raises(ClipSearchAPIError) as kept:
            admin.drop_collection("default")
        assert kept.value.status_code == 409 and "cannot be dropped" in str(kept.value.reason)
        assert admin.search_text("a photo", k=3).ids  # the default still answers


def test_a_collection_the_indexer_builds_or_another_worker_drops_is_followed_within_a_poll(
        data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a red kite\na blue whale\n")
    with serve(collections_settings(data_dir)) as url, ClipSearchClient(url, collection="notes") as notes:
        assert main(["build", "--texts", str(tmp_path / "notes.txt"), "--collection", "notes", "--data-dir",
                     str(data_dir), "--model", "tiny", "--device", "cpu", "--workers", "0", "--no-progress",
                     "--backend", "torch"]) == 0
        wait_for(lambda: "notes" in [entry["name"] for entry in notes.collections() if entry["ready"]])
        assert {hit.text for hit in notes.search_text("a kite", target="text", k=5).results} == {"a red kite",
                                                                                                "a blue whale"}
        Catalog(tmp_path / "unused", data_dir).drop("notes")  # as another worker's DELETE does
        wait_for(lambda: "notes" not in [entry["name"] for entry in notes.collections()])
        with pytest.raises(ClipSearchAPIError) as gone:
            notes.search_text("a kite", target="text")
        assert gone.value.status_code == 404


def test_a_collection_past_the_memory_budget_is_refused_at_load_with_the_figures(
        data_dir: Path, encoder: ClipEncoder) -> None:
    shutil.copytree(data_dir / "default", data_dir / "second")
    collection_bytes = resident_bytes(read_manifest(data_dir / "default"))
    budget_mb = (encoder.weight_bytes + 1.5 * collection_bytes) / MB  # the model and one collection, not two
    with serve(collections_settings(data_dir, memory_budget_mb=budget_mb)) as url:
        listed = {entry["name"]: entry for entry in httpx.get(f"{url}/collections").json()}
        assert listed["default"]["ready"] and not listed["second"]["ready"]
        problem = listed["second"]["problem"]
        assert f"its indices need {collection_bytes / MB:.1f} MB" in problem and "over the budget of" in problem
        refused = httpx.post(f"{url}/collections/second/search/text", json={"text": "a photo"})
        assert refused.status_code == 503 and "over the budget" in refused.json()["reason"]
        memory = httpx.get(f"{url}/info").json()["memory"]
        assert memory["collections_bytes"] == {"default": collection_bytes}
        assert memory["models_bytes"] == {"tiny (random weights, seed 0)": encoder.weight_bytes}
        assert memory["budget_bytes"] == int(budget_mb * MB) and memory["collection_bytes"] == collection_bytes


def test_a_key_for_one_collection_sees_and_reaches_only_that_one(data_dir: Path, tmp_path: Path) -> None:
    Catalog(tmp_path / "unused", data_dir).create("holidays", ModelRef("tiny"), 32)
    _, reader = create_key(tmp_path / "keys.json", "holiday-reader", KeyScope.READ, collections=("holidays",))
    _, admin = create_key(tmp_path / "keys.json", "root", KeyScope.ADMIN)
    with serve(collections_settings(data_dir, keys_file=tmp_path / "keys.json")) as url:
        as_reader = {"X-API-Key": reader}
        assert [entry["name"] for entry in httpx.get(f"{url}/collections", headers=as_reader).json()] == ["holidays"]
        assert httpx.get(f"{url}/collections/holidays/info", headers=as_reader).status_code == 200
        elsewhere = httpx.get(f"{url}/collections/default/info", headers=as_reader)
        assert elsewhere.status_code == 403 and "not 'default'" in elsewhere.json()["reason"]
        assert httpx.put(f"{url}/collections/more", headers=as_reader).status_code == 403
        assert httpx.delete(f"{url}/collections/holidays", headers=as_reader).status_code == 403
        assert httpx.put(f"{url}/collections/more").status_code == 401
        assert httpx.put(f"{url}/collections/more", headers={"X-API-Key": admin}).status_code == 201
        assert httpx.delete(f"{url}/collections/more", headers={"X-API-Key": admin}).status_code == 204


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/collections/.hidden", None, 422, "collection"),
    ("/collections/-dash", None, 422, "collection"),
    ("/collections/holidays", {"model": "no-such-model"}, 422, "model"),
    ("/collections/holidays", {"model": 7}, 422, "model"),
])
def test_a_collection_that_cannot_be_made_is_refused_naming_the_field(data_dir: Path, path: str,
                                                                       body: dict[str, Any] | None, status: int,
                                                                       field: str) -> None:
    with serve(collections_settings(data_dir)) as url:
        refused = httpx.put(f"{url}{path}", json=body, headers={"X-Admin-Key": ADMIN})
        assert refused.status_code == status and refused.json()["field"] == field, refused.text
        assert [entry["name"] for entry in httpx.get(f"{url}/collections").json()] == ["default"]


def test_a_server_of_one_bundle_makes_no_collections_and_a_folder_without_default_still_starts(
        bundle_path: Path, tmp_path: Path) -> None:
    with serve(Settings(bundle_path=bundle_path, device="cpu", admin_key=ADMIN)) as url:  # type: ignore[call-arg]
        refused = httpx.put(f"{url}/collections/holidays", headers={"X-Admin-Key": ADMIN})
        assert refused.status_code == 409 and "CLIPSEARCH_DATA_DIR" in refused.json()["reason"]
    with serve(collections_settings(tmp_path / "empty")) as url:
        assert httpx.get(f"{url}/ready").status_code == 200 and httpx.get(f"{url}/collections").json() == []
        missing = httpx.post(f"{url}/search/text", json={"text": "a photo"})
        assert missing.status_code == 404 and "serves: none yet" in missing.json()["reason"]
        made = httpx.put(f"{url}/collections/default", json={"model": "tiny"}, headers={"X-Admin-Key": ADMIN})
        assert made.status_code == 201 and made.json()["ready"]
        empty = httpx.post(f"{url}/search/text", json={"text": "a photo"})
        assert empty.status_code == 422 and empty.json()["reason"] == "the bundle has no image items (it has: none)"
        with ClipSearchClient(url, admin_key=ADMIN) as client:
            client.add_texts([NewText("the first note")])
            assert [hit.text for hit in client.search_text("a note", target="text").results] == ["the first note"]


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)

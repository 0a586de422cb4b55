"""Collections over HTTP: every route under /collections/default/ answers as today's does, the
collections are listed, a collection not served is 404; and a collection's snapshot from the
running server, restored elsewhere with the indexer, holds the writes acknowledged before it."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchAPIError, ClipSearchClient, NewText, Query
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
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
    assert "this server serves: default" in str(missing.value.reason)


def test_a_snapshot_of_a_collection_not_served_is_404_and_needs_the_admin_key(bundle_path: Path) -> None:
    with serve(Settings(bundle_path=bundle_path, device="cpu", admin_key=ADMIN)) as url:  # type: ignore[call-arg]
        missing = httpx.post(f"{url}/collections/holidays/snapshot", headers={"X-Admin-Key": ADMIN})
        assert missing.status_code == 404 and missing.json()["field"] == "collection"
        assert "this server serves: default" in missing.json()["reason"]
        without = httpx.post(f"{url}/collections/default/snapshot")
        assert without.status_code == 403 and without.json()["field"] == "X-Admin-Key"

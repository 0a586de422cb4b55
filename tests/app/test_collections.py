"""A collection's snapshot from the running server: taken while it is written to, restored
elsewhere with the indexer, holding the writes acknowledged before it; and refused for a
collection the server does not serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from app.settings import Settings
from clipsearch.client import ClipSearchClient, NewText
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


def test_a_snapshot_of_a_collection_not_served_is_404_and_needs_the_admin_key(bundle_path: Path) -> None:
    with serve(Settings(bundle_path=bundle_path, device="cpu", admin_key=ADMIN)) as url:  # type: ignore[call-arg]
        missing = httpx.post(f"{url}/collections/holidays/snapshot", headers={"X-Admin-Key": ADMIN})
        assert missing.status_code == 404 and missing.json()["field"] == "name"
        assert "this server serves: default" in missing.json()["reason"]
        without = httpx.post(f"{url}/collections/default/snapshot")
        assert without.status_code == 403 and without.json()["field"] == "X-Admin-Key"

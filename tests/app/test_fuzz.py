"""Schemathesis against the app's own OpenAPI schema: no 5xx, no response outside the schema.

A bounded number of examples here; `scripts/fuzz` runs the long version (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.support.fuzzing import fuzz
from tests.support.serving import serve


def test_fuzzing_every_endpoint_finds_no_failure_and_the_server_lives(server_url: str, tmp_path: Path) -> None:
    finished = fuzz(server_url, tmp_path)
    assert finished.returncode == 0, finished.stdout[-6000:]
    assert httpx.get(f"{server_url}/health").json() == {"status": "ok"}
    assert httpx.post(f"{server_url}/search/text", json={"text": "after the fuzz"}).status_code == 200


@pytest.fixture(scope="module")
def locked_url(bundle_path: Path) -> Iterator[str]:
    with serve(Settings(bundle_path=bundle_path, device="cpu", api_key="fuzz-key")) as url:  # type: ignore[call-arg]
        yield url


def test_fuzzing_with_an_api_key_checks_authentication_too(locked_url: str, tmp_path: Path) -> None:
    finished = fuzz(locked_url, tmp_path, "--header", "X-API-Key: fuzz-key")
    assert finished.returncode == 0, finished.stdout[-6000:]


def test_fuzzing_the_collection_routes_as_an_admin_finds_no_failure_and_keeps_the_default(
        bundle_path: Path, tmp_path: Path) -> None:
    import shutil

    from tests.support.serving import ADMIN

    shutil.copytree(bundle_path, tmp_path / "collections" / "default")
    settings = Settings(data_dir=tmp_path / "collections", device="cpu", admin_key=ADMIN,  # type: ignore[call-arg]
                        reload_poll_s=0.2)
    with serve(settings) as url:
        # With a good admin key sent, an X-API-Key the open server ignores is no "invalid authentication"
        # (either header may carry a write's key): that check is left out. The first question loads
        # the question-answering model, which can take longer than the default 10 s on a busy machine.
        finished = fuzz(url, tmp_path, "--header", f"X-Admin-Key: {ADMIN}", "--include-path-regex", "^/collections",
                        "--request-timeout", "60", exclude="ignored_auth")
        assert finished.returncode == 0, finished.stdout[-6000:]
        assert httpx.post(f"{url}/search/text", json={"text": "after the fuzz"}).status_code == 200
        listed = httpx.get(f"{url}/collections").json()
    on_disk = sorted(path.name for path in (tmp_path / "collections").iterdir() if not path.name.startswith("."))
    names = [entry["name"] for entry in listed]
    assert names[0] == "default" and sorted(names) == on_disk

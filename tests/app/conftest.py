from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchClient
from tests.support.serving import LIMITS, serve


@pytest.fixture(scope="session")
def server_url(bundle_path: Path) -> Iterator[str]:
    with serve(Settings(bundle_path=bundle_path, device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture()
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


@pytest.fixture()
def client(server_url: str) -> Iterator[ClipSearchClient]:
    with ClipSearchClient(server_url) as search_client:
        yield search_client

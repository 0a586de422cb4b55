"""Schemathesis against the app's own OpenAPI schema: no 5xx, no response outside the schema.

A bounded number of examples here; `scripts/fuzz` runs the long version (docs/reliability.md).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.support.serving import serve

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Every check but one: requests the schema allows can still be refused for reasons a schema cannot
# express (bytes that are not an image, whitespace-only text, k above the server's max_k, the image
# of a text item), and those refusals are the point of the API's 4xx errors.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def fuzz(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if not SCHEMATHESIS.is_file():
        pytest.skip(f"schemathesis is not installed beside {sys.executable} (pip install '.[dev]')")
    return subprocess.run([str(SCHEMATHESIS), "run", f"{url}/openapi.json", *CHECKS, "--max-examples", "15",
                           "--seed", "20261122", "--workers", "1", *extra],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


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

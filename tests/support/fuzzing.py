"""Schemathesis runs against a server the tests started: its OpenAPI schema, every check but the one
a schema cannot satisfy, a bounded number of examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Every check but one: requests the schema allows can still be refused for reasons a schema cannot
# express (bytes that are not an image, whitespace-only text, k above the server's max_k, the image
# of a text item), and those refusals are the point of the API's 4xx errors.
EXCLUDED = "positive_data_acceptance"


def fuzz(url: str, tmp_path: Path, *extra: str, exclude: str = "") -> subprocess.CompletedProcess[str]:
    if not SCHEMATHESIS.is_file():
        pytest.skip(f"schemathesis is not installed beside {sys.executable} (pip install '.[dev]')")
    checks = ["--checks", "all", "--exclude-checks", ",".join(filter(None, (EXCLUDED, exclude)))]
    return subprocess.run([str(SCHEMATHESIS), "run", f"{url}/openapi.json", *checks, "--max-examples", "15",
                           "--seed", "20261122", "--workers", "1", *extra],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def copy(bundle_path: Path, tmp_path: Path) -> Path:
    """A private copy of the session's bundle, free to damage."""
    return Path(shutil.copytree(bundle_path, tmp_path / "copy"))

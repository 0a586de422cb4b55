"""The offline models' Hugging Face files are exactly what the repository's script writes, and ship with the package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_tokenizers_and_configs_are_what_scripts_make_tiny_towers_writes() -> None:
    finished = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-tiny-towers"), "--check"],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_the_package_carries_the_offline_files_and_the_demo_checkpoint() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [path.relative_to(ROOT / "clipsearch") for path in (ROOT / "clipsearch" / "model" / "model_configs")
               .rglob("*.json")]
    assert all(any(path.match(pattern) for pattern in data["clipsearch"]) for path in shipped), shipped
    assert any(Path("demo_weights/tiny-multilingual-shapes.pt").match(pattern) for pattern in data["indexer"])

"""In CI a test may be skipped only for want of a GPU or a network: any other skip fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = '''
import pytest

def test_that_needs_a_missing_tool():
    pytest.skip("no such tool on this machine")

@pytest.mark.gpu
def test_that_needs_a_gpu():
    pass

@pytest.mark.network
def test_that_needs_the_network():
    pass
'''


def run_probe(tmp_path: Path, ci: str) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE)
    finished = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                               "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path), "-rA"],
                              cwd=ROOT, env={**os.environ, "CI": ci, "CLIPSEARCH_NETWORK_TESTS": "0"},
                              capture_output=True, text=True, timeout=300)
    return finished.stdout


def test_in_ci_a_skip_for_a_missing_tool_fails_and_a_gpu_or_network_skip_does_not(tmp_path: Path) -> None:
    output = run_probe(tmp_path, "true")
    assert "FAILED" in output and "test_that_needs_a_missing_tool" in output.split("FAILED", 1)[1].splitlines()[0]
    assert "skipped in CI, where everything it needs is installed: no such tool on this machine" in output
    assert "1 failed" in output.splitlines()[-1], output.splitlines()[-1]  # and only that one


def test_elsewhere_every_skip_is_only_a_skip(tmp_path: Path) -> None:
    summary = run_probe(tmp_path, "").splitlines()[-1]
    assert "failed" not in summary and "skipped" in summary, summary

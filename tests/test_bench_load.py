"""The load benchmark runs end to end at a tiny size: no errors, memory flat, figures printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_bounded_load_has_no_errors_and_prints_its_figures() -> None:
    finished = subprocess.run([sys.executable, "bench/load.py", "--clients", "8", "--duration", "4", "--warmup", "1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    figures = {line["figure"]: line for line in map(json.loads, finished.stdout.splitlines())}
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    load = figures["mixed search load"]
    assert load["errors"] == 0 and load["requests"] > 0 and load["p50_ms"] <= load["p99_ms"]
    assert figures["baseline /health"]["errors"] == 0
    assert figures["server memory"]["growth"] <= 0.10

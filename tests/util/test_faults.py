"""Kill points: a process told to die at a point dies there, and only there; every point is listed and used."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from clipsearch.util.faults import POINTS

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "from clipsearch.util.faults import kill_point\nkill_point('sync:embedded')\nprint('after', flush=True)"


def run(kill_at: str | None) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != "CLIPSEARCH_KILL_AT"}
    if kill_at is not None:
        environment["CLIPSEARCH_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", PROGRAM], env=environment, capture_output=True, text=True,
                          timeout=60)


def test_a_process_told_to_die_at_a_point_dies_there_with_sigkill() -> None:
    killed = run("sync:embedded")
    assert killed.returncode == -signal.SIGKILL and "after" not in killed.stdout


def test_any_other_point_or_none_lets_it_go_on() -> None:
    for kill_at in (None, "", "live:committed"):
        finished = run(kill_at)
        assert finished.returncode == 0 and finished.stdout == "after\n"


def test_every_point_in_the_code_is_listed_and_every_listed_point_is_in_the_code() -> None:
    used = {match for path in (ROOT / "clipsearch").rglob("*.py")
            for match in re.findall(r'kill_point\("([^"]+)"\)', path.read_text(encoding="utf-8"))}
    assert used == set(POINTS)

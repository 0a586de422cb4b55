"""Progress bars: a live line in a terminal, one line per redraw in a log."""

from __future__ import annotations

import io

import pytest

from clipsearch.util import progress
from clipsearch.util.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_every_redraw_is_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # every update redraws
    with progress_bar(total=3, unit="image", desc="encoding images", stream=log, miniters=1) as bar:
        for _ in range(3):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 3
    assert all(line.startswith("encoding images:") for line in lines)
    assert "3/3" in lines[-1]


def test_in_a_terminal_the_bar_redraws_its_line() -> None:
    terminal = Terminal()
    with progress_bar(total=2, desc="encoding images", stream=terminal, mininterval=0, miniters=1) as bar:
        bar.update(2)
    assert "\r" in terminal.getvalue()


def test_a_disabled_bar_writes_nothing() -> None:
    log = io.StringIO()
    with progress_bar(total=2, stream=log, disable=True) as bar:
        bar.update(2)
    assert log.getvalue() == ""

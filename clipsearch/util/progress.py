"""Progress bars that read well both in a terminal and in a log (`docker compose up`, CI).

tqdm redraws one line with carriage returns. A terminal shows that as one live line; a log keeps
every redraw glued into a single line that never ends, so `docker compose up` showed nothing of a
build until it was over. Where stderr is not a terminal, each redraw is written as a line of its
own instead, at most every LOG_INTERVAL_S seconds.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


class _Lines:
    """A stream that writes each of tqdm's redraws as one line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip("\n")
        if line.strip():
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*iterable: Any, stream: TextIO | None = None, **options: Any) -> tqdm:  # type: ignore[type-arg]
    """tqdm(*iterable, **options) on `stream` (stderr), written line by line where that is not a terminal."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        options |= {"file": _Lines(stream), "mininterval": LOG_INTERVAL_S, "dynamic_ncols": False, "ncols": 100}
    else:
        options.setdefault("file", stream)
    return tqdm(*iterable, **options)

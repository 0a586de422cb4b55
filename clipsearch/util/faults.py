"""Named points where a crash test may kill this process, so that it knows where its kill landed.

A test that kills a process after a sleep cannot tell whether the kill landed before, during or
after the operation it means to interrupt, and passes either way. Instead it sets
`CLIPSEARCH_KILL_AT=<point>` in the child's environment: when the child reaches that point, it is
killed at once with SIGKILL, as a power cut or the OOM killer would kill it (no exception
handlers, no `finally`, no atexit). The test then sees exit status -9 only if the point was
reached, and checks what a kill there must leave.

The variable is read once, at import; unset (always, outside tests), `kill_point` is one comparison.
"""

from __future__ import annotations

import os
import signal

KILL_AT = os.environ.get("CLIPSEARCH_KILL_AT") or None

POINTS = {
    "sync:embedded": "a sync has embedded everything and has not begun writing",
    "live:committing": "a live-log transaction has written its rows and not committed them",
    "live:committed": "a live-log transaction has committed",
    "compaction:prepared": "a compaction has built the new base in memory and written nothing",
    "compaction:staged": "a compaction has written the new bundle beside the old one, not yet holding writes",
    "compaction:carried": "a compaction holds writes and has carried the latest into the new bundle, not swapped",
    "compaction:swapped": "a compaction has swapped the new bundle in and not yet removed the old one",
}
"""Every point, with what is true when a process is killed there."""


def kill_point(point: str) -> None:
    """Die here, with SIGKILL, if this process was told to (CLIPSEARCH_KILL_AT=point)."""
    if point == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)

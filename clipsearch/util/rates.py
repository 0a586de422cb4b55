"""Token buckets shared by every worker process of one server: one SQLite file, one row per bucket.

Each request takes a token from its bucket in one short write transaction; a bucket refills at its
rate up to its burst. SQLite's lock serialises the workers, so a limit of 10/s holds across four
workers as it does in one. The file holds nothing worth keeping (it may be deleted at any time:
every bucket starts full again), so it is written without fsync.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

BUSY_TIMEOUT_S = 5.0


class TokenBuckets:
    """Token buckets by name in the SQLite file at `path`; thread-safe, and shared between processes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        # Wall-clock time: the workers share it, where each has its own monotonic clock.
        self.path, self.clock = path, clock
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                               "updated REAL NOT NULL)")

    def take(self, name: str, per_second: float, burst: float) -> float:
        """Take one token from bucket `name`: 0 if there was one, else the seconds until there will be
        (nothing is taken then)."""
        connection = self._connection()
        with connection:  # BEGIN IMMEDIATE … COMMIT: no other worker reads the row in between
            connection.execute("BEGIN IMMEDIATE")
            now = self.clock()
            row = connection.execute("SELECT tokens, updated FROM buckets WHERE name = ?", (name,)).fetchone()
            tokens = burst if row is None else min(burst, row[0] + max(0.0, now - row[1]) * per_second)
            if tokens >= 1:
                wait, tokens = 0.0, tokens - 1
            else:
                wait = (1 - tokens) / per_second
            connection.execute("INSERT INTO buckets (name, tokens, updated) VALUES (?, ?, ?) ON CONFLICT (name) "
                               "DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
                               (name, tokens, now))
        return wait

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            self._local.connection = connection
        return connection

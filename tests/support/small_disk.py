"""A small filesystem of the test's own: a tmpfs of a few MiB mounted on a temporary folder, that the
test fills, grows, empties or remounts read-only, so that a full disk and a read-only store are
the kernel's real answers (ENOSPC, EROFS, SQLITE_FULL), not simulated ones.

Mounting needs root (as in CI and in the project's containers); elsewhere the fixture skips, and
in CI, where it must run, that skip fails the run (tests/conftest.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clipsearch.util.storage import disk_space

FILLER = ".filler"
MiB = 1 << 20


class SmallDisk:
    """A tmpfs mounted at `path`, of `size_bytes`."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path, self.size_bytes = path, size_bytes

    def free_bytes(self) -> int:
        space = disk_space(self.path)
        assert space is not None
        return space.free_bytes

    def fill(self, leave_bytes: int = 0) -> None:
        """Take all the room but `leave_bytes`, with a filler file at the top of the filesystem."""
        filler = self.path / FILLER
        with filler.open("ab") as file:
            while self.free_bytes() > leave_bytes:
                try:
                    file.write(b"\0" * min(MiB, max(self.free_bytes() - leave_bytes, 4096)))
                    file.flush()
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break

    def empty(self) -> None:
        """Give back the room the filler took."""
        (self.path / FILLER).unlink(missing_ok=True)

    def resize(self, size_bytes: int) -> None:
        """Grow (or shrink) the filesystem in place, as a volume is grown under a running service."""
        self._mount_option(f"remount,size={size_bytes}")
        self.size_bytes = size_bytes

    def read_only(self) -> None:
        """Remount read-only (the kernel refuses while a file is open for writing on it)."""
        self._mount_option("remount,ro")

    def writable(self) -> None:
        self._mount_option("remount,rw")

    def _mount_option(self, option: str) -> None:
        subprocess.run(["mount", "-o", option, str(self.path)], check=True, capture_output=True)


@contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[SmallDisk]:
    """Mount a tmpfs of `size_bytes` at `path` (created) for the block; skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the full-disk tests needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(path, size_bytes)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)

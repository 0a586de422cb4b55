"""`python -m indexer snapshot` and `restore`: one archive of a live bundle (its base, live log and
uploaded images), taken while a server writes to it, and brought back anywhere, verified
(clipsearch.store.bundle.snapshot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsearch.errors import ClipSearchError
from clipsearch.store.bundle.snapshot import restore_snapshot, take_snapshot
from clipsearch.store.live import LOCK_TIMEOUT_S
from clipsearch.util.storage import format_bytes
from indexer.common import Commands, Fail, failed


def add_parser(commands: Commands) -> None:
    taken = commands.add_parser("snapshot", help="archive a bundle (base, live changes, uploads) while it is served",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    taken.add_argument("--bundle", type=Path, required=True, help="the bundle to archive")
    taken.add_argument("--out", type=Path, required=True, help="the archive to write (a .tar file)")
    taken.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT_S,
                       help="longest to wait, in seconds, for a write or compaction under way to finish")
    restored = commands.add_parser("restore", help="bring a snapshot back as a bundle, verified",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    restored.add_argument("--snapshot", type=Path, required=True, help="the archive `indexer snapshot` wrote")
    restored.add_argument("--bundle", type=Path, required=True, help="where the bundle goes (a path that does not "
                                                                     "exist yet)")


def check(args: argparse.Namespace, fail: Fail) -> None:
    if args.command == "snapshot" and args.lock_timeout <= 0:
        fail("--lock-timeout: must be above zero")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "snapshot":
            info = take_snapshot(args.bundle, args.out, args.lock_timeout)
            print(f"snapshot of {args.bundle} written to {info.path}: {info.files} files, {format_bytes(info.bytes)}, "
                  f"in {info.took_s:.1f} s (writes held up {info.locked_s * 1000:.0f} ms)")
        else:
            print(f"restored {args.snapshot} as the bundle at {restore_snapshot(args.snapshot, args.bundle)}, "
                  "every file verified")
    except ClipSearchError as error:
        return failed(error)
    return 0

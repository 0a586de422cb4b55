"""`python -m indexer compact`: fold a bundle's live log into its base (a server serving it loads the result)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsearch.config import CompactionPolicy
from clipsearch.errors import ClipSearchError
from clipsearch.index import faiss_index
from clipsearch.store.compaction import compact
from clipsearch.store.live import count_live_changes
from clipsearch.store.manifest import read_manifest
from indexer.common import (
    Commands,
    Fail,
    describe_error,
    non_negative_int,
)

COMPACTION = CompactionPolicy()


def add_parser(commands: Commands) -> None:
    command = commands.add_parser(
        "compact", help="fold a bundle's live changes into its base (a server serving it loads the result by itself)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--bundle", type=Path, required=True, help="the bundle to compact")
    command.add_argument("--if-due", action="store_true",
                         help="only if its live and hidden items reach --min-changes and --fraction of the base "
                              "(for a cron job)")
    command.add_argument("--min-changes", type=non_negative_int, default=COMPACTION.min_changes,
                         help="with --if-due: never for fewer changes than this")
    command.add_argument("--fraction", type=float, default=COMPACTION.fraction,
                         help="with --if-due: due once the changes reach this share of the base")
    command.add_argument("--retrain-fraction", type=float, default=COMPACTION.retrain_fraction,
                         help="train an IVF index again (and measure its recall again) once the rows added since "
                              "its training reach this share of the rows it was trained with")


def check(args: argparse.Namespace, fail: Fail) -> None:
    """Nothing to check beyond argparse's own: a compaction loads no model."""


def run(args: argparse.Namespace) -> int:
    policy = CompactionPolicy(args.min_changes, args.fraction, args.retrain_fraction)
    try:
        if args.if_due:
            manifest = read_manifest(args.bundle)
            base = sum(record.count for record in manifest.modalities.values())
            changes = count_live_changes(args.bundle)
            if not policy.due(changes, base):
                print(f"{args.bundle}: {changes} live changes over a base of {base}; not due "
                      f"(at least {max(policy.min_changes, policy.fraction * base):.0f})")
                return 0
        summary = compact(args.bundle, policy, use_gpu=faiss_index.gpu_available())
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    assert summary is not None  # compact waits for any other compaction to finish
    print(f"compacted {args.bundle}: {summary.describe()}")
    return 0

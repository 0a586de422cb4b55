"""`python -m indexer sync` brings a bundle up to date with its sources through its live log;
`python -m indexer compact` folds the log into the base."""

from __future__ import annotations

import argparse
import sys

from clipsearch.config import CompactionPolicy
from clipsearch.errors import ClipSearchError
from clipsearch.index import faiss_index
from clipsearch.ingest.sources import Columns
from clipsearch.ingest.sync import SyncSources, sync
from clipsearch.store.compaction import compact
from clipsearch.store.live import count_live_changes
from clipsearch.store.manifest import read_manifest
from indexer.cli import bundle_encoder, describe_error, on_live_bundle


def run_sync(args: argparse.Namespace) -> int:
    try:
        encoder = bundle_encoder(args)
        sources = SyncSources(args.images, args.texts, Columns(image=args.image_column, caption=args.caption_column,
                                                                text=args.text_column))
        summary = on_live_bundle(args.bundle, encoder.embedding_dim, lambda bundle, live: sync(
            bundle, live, encoder, sources, batch_size=args.batch_size, workers=args.workers,
            max_pixels=args.max_pixels, progress=not args.no_progress))
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(f"synced {args.bundle}: {summary.describe()}")
    for uri, reason in summary.skipped[:20]:
        print(f"  skipped {uri}: {reason}")
    if len(summary.skipped) > 20:
        print(f"  … and {len(summary.skipped) - 20} more")
    return 0


def run_compact(args: argparse.Namespace) -> int:
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

"""`python -m indexer sync`: bring a bundle up to date with its sources through its live log."""

from __future__ import annotations

import argparse
import sys

from clipsearch.bundle import load_bundle
from clipsearch.errors import ClipSearchError
from clipsearch.live import LIVE_FILE, LiveLog
from clipsearch.sources import Columns
from clipsearch.sync import SyncSources, sync
from indexer.cli import bundle_encoder, describe_error


def run_sync(args: argparse.Namespace) -> int:
    try:
        encoder = bundle_encoder(args)
        bundle = load_bundle(args.bundle)
        live = LiveLog(args.bundle / LIVE_FILE, bundle.items, encoder.embedding_dim)
        try:
            summary = sync(bundle, live, encoder, SyncSources(args.images, args.texts, Columns(
                image=args.image_column, caption=args.caption_column, text=args.text_column)),
                batch_size=args.batch_size, workers=args.workers, max_pixels=args.max_pixels,
                progress=not args.no_progress)
        finally:
            live.close()
            bundle.close()
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(f"synced {args.bundle}: {summary.describe()}")
    for uri, reason in summary.skipped[:20]:
        print(f"  skipped {uri}: {reason}")
    if len(summary.skipped) > 20:
        print(f"  … and {len(summary.skipped) - 20} more")
    return 0

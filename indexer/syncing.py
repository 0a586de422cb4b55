"""`python -m indexer sync`: bring a bundle up to date with its sources through its live log."""

from __future__ import annotations

import argparse
import sys

from clipsearch.bundle import load_bundle
from clipsearch.encoder import load_encoder
from clipsearch.errors import CheckpointRequired, ClipSearchError
from clipsearch.live import LIVE_FILE, LiveLog
from clipsearch.manifest import check_model, read_manifest
from clipsearch.sources import Columns
from clipsearch.sync import SyncSources, sync
from indexer.cli import describe_error


def run_sync(args: argparse.Namespace) -> int:
    try:
        manifest = read_manifest(args.bundle)
        if manifest.model.checkpoint_sha256 and args.checkpoint is None:
            raise CheckpointRequired("the bundle was built from a checkpoint file; give it with --checkpoint")
        encoder = load_encoder(manifest.model.name, manifest.model.pretrained,
                               args.checkpoint if manifest.model.checkpoint_sha256 else None, args.device,
                               backend=args.backend, onnx_cache=args.onnx_cache)
        check_model(manifest, encoder.ref, encoder.embedding_dim)
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

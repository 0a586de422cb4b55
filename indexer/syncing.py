"""`python -m indexer sync` brings a bundle up to date with its sources through its live log;
`python -m indexer compact` folds the log into the base."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsearch.errors import ClipSearchError
from clipsearch.ingest.sources import Columns
from clipsearch.ingest.sync import SyncSources, sync
from indexer.common import (
    DEFAULTS,
    Commands,
    Fail,
    add_audio_arguments,
    add_collection_arguments,
    add_image_arguments,
    add_model_arguments,
    add_speed_arguments,
    add_video_arguments,
    audio_sampling,
    bundle_encoder,
    check_model_from_bundle,
    check_weights,
    describe_error,
    on_live_bundle,
    resolve_collection,
    video_sampling,
)


def add_parser(commands: Commands) -> None:
    command = commands.add_parser(
        "sync", help="bring a bundle up to date with its sources without a rebuild: embed new and changed files, "
                     "drop deleted ones, keep the vectors of moved ones",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--bundle", type=Path, default=None, help="the bundle to update (through its live log; a "
                                                                   "server serving it sees the changes at once)")
    add_collection_arguments(command, "bundle")
    command.add_argument("--images", type=Path, default=None, help="the image folder or manifest it was built from")
    command.add_argument("--texts", type=Path, default=None, help="the text file it was built from (the same path "
                                                                  "as at build time: text items are named after it)")
    command.add_argument("--text-column", default=DEFAULTS.columns.text, help="text column of a JSONL or CSV file")
    add_video_arguments(command, cutting=False)
    add_audio_arguments(command, cutting=False)
    add_model_arguments(command, None)
    add_speed_arguments(command)
    add_image_arguments(command)
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def check(args: argparse.Namespace, fail: Fail) -> None:
    resolve_collection(args, "bundle", fail)
    check_weights(args, fail)
    check_model_from_bundle(args, fail)
    if args.images is None and args.texts is None and args.videos is None and args.audio is None:
        fail("give --images, --texts, --videos, --audio or several of them")


def run(args: argparse.Namespace) -> int:
    try:
        encoder = bundle_encoder(args)
        sources = SyncSources(args.images, args.texts, Columns(image=args.image_column, caption=args.caption_column,
                                                                text=args.text_column),
                              videos=args.videos, video=video_sampling(args), audio=args.audio,
                              sound=audio_sampling(args))
        summary = on_live_bundle(args.bundle, encoder.embedding_dim, lambda bundle, live: sync(
            bundle, live, encoder, sources, batch_size=args.batch_size, workers=args.workers,
            max_pixels=args.max_pixels, progress=not args.no_progress))
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(f"synced {args.bundle}: {summary.describe()}")
    for label, entries in (("skipped", summary.skipped), ("text not read in", summary.text_unread)):
        for uri, reason in entries[:20]:
            print(f"  {label} {uri}: {reason}")
        if len(entries) > 20:
            print(f"  … and {len(entries) - 20} more")
    return 0

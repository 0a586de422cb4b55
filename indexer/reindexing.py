"""`python -m indexer reindex` and `rollback`: move a served collection to another model without
downtime, and back (clipsearch.ingest.reindex)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsearch.errors import ClipSearchError
from clipsearch.index import faiss_index
from clipsearch.ingest.reindex import forget_previous, previous_path, reindex, rollback
from clipsearch.model.factory import load_encoder
from indexer.common import (
    DEFAULTS,
    Commands,
    Fail,
    add_collection_arguments,
    add_model_arguments,
    add_speed_arguments,
    check_weights,
    failed,
    positive_int,
    pretrained_of,
    resolve_collection,
)


def add_parser(commands: Commands) -> None:
    moved = commands.add_parser(
        "reindex", help="embed every item of a served bundle again with another model, carry over the writes "
                        "made meanwhile and switch servers over in one step; the old bundle is kept for rollback",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    moved.add_argument("--bundle", type=Path, default=None, help="the bundle to reindex")
    add_collection_arguments(moved, "bundle")
    add_model_arguments(moved, None)
    add_speed_arguments(moved)
    moved.add_argument("--max-pixels", type=positive_int, default=DEFAULTS.max_pixels,
                       help="images declaring more pixels are not decoded (decompression-bomb guard)")
    moved.add_argument("--no-progress", action="store_true", help="no progress bar")
    back = commands.add_parser(
        "rollback", help="put back the bundle the last reindex replaced, in one step (servers follow within a poll)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    back.add_argument("--bundle", type=Path, default=None, help="the reindexed bundle")
    add_collection_arguments(back, "bundle")
    back.add_argument("--discard-live-changes", action="store_true",
                      help="roll back even though the bundle was written to since the switch, dropping those writes")
    back.add_argument("--remove", action="store_true",
                      help="instead of rolling back, delete the earlier bundle kept beside it (no rollback after)")


def check(args: argparse.Namespace, fail: Fail) -> None:
    resolve_collection(args, "bundle", fail)
    if args.command == "reindex":
        check_weights(args, fail)
        if args.model is None:
            fail("--model: name the model to reindex with")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "reindex":
            encoder = load_encoder(args.model, pretrained_of(args), args.checkpoint, args.device,
                                   backend=args.backend, onnx_cache=args.onnx_cache, text_language=args.text_language,
                                   int8_calibration=args.int8_calibration)
            summary = reindex(args.bundle, encoder, batch_size=args.batch_size, workers=args.workers,
                              max_pixels=args.max_pixels, progress=not args.no_progress,
                              use_gpu=encoder.device.type == "cuda" and faiss_index.gpu_available())
            print(f"{args.bundle}: {summary.describe()}; the earlier bundle is kept at {previous_path(args.bundle)} "
                  "for `indexer rollback` (`--remove` deletes it)")
        elif args.remove:
            kept = previous_path(args.bundle)
            print(f"removed {kept}" if forget_previous(args.bundle) else f"no earlier bundle kept beside {args.bundle}")
        else:
            manifest = rollback(args.bundle, args.discard_live_changes)
            print(f"{args.bundle} is the bundle of {manifest.model.describe()} again; the reindexed one is kept at "
                  f"{previous_path(args.bundle)} (a second rollback puts it back)")
    except ClipSearchError as error:
        return failed(error)
    return 0

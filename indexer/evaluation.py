"""`python -m indexer eval`: retrieval quality of a model (or of a bundle's model) on image-caption pairs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from clipsearch.encoder import load_encoder
from clipsearch.errors import CheckpointRequired, ClipSearchError
from clipsearch.evaluate import RECALL_AT, RetrievalScores, encoder_functions, evaluate, read_pairs
from clipsearch.manifest import check_model, read_manifest, record_evaluation
from clipsearch.sources import Columns
from indexer.cli import describe_error, pretrained_of


def run_eval(args: argparse.Namespace) -> int:
    try:
        corpus = read_pairs(args.pairs, Columns(image=args.image_column, caption=args.caption_column))
        if args.bundle is not None:
            manifest = read_manifest(args.bundle)
            if manifest.model.checkpoint_sha256 and args.checkpoint is None:
                raise CheckpointRequired("the bundle was built from a checkpoint file; give it with --checkpoint")
            model, pretrained = manifest.model.name, manifest.model.pretrained
        else:
            model, pretrained = args.model, pretrained_of(args)
        encoder = load_encoder(model, pretrained, args.checkpoint, args.device, backend=args.backend,
                               onnx_cache=args.onnx_cache)
        if args.bundle is not None:
            check_model(manifest, encoder.ref, encoder.embedding_dim)
        scores, scored = evaluate(corpus, *encoder_functions(encoder, args.batch_size, args.workers, args.max_pixels,
                                                             progress=not args.no_progress), device=encoder.device)
        record = {"model": encoder.ref.describe(), "backend": encoder.backend, "pairs": str(args.pairs),
                  "skipped": len(scored.skipped), "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  **scores.as_dict()}
        if args.bundle is not None:
            record_evaluation(args.bundle, record)
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(describe(record, scores))
        for uri, reason in scored.skipped[:20]:
            print(f"  skipped {uri}: {reason}")
        if len(scored.skipped) > 20:
            print(f"  … and {len(scored.skipped) - 20} more")
        if args.bundle is not None:
            print(f"recorded in {args.bundle / 'manifest.json'}")
    return 0


def describe(record: dict[str, Any], scores: RetrievalScores) -> str:
    """The figures as a table for people."""
    header = "".join(f"{f'R@{k}':>8}" for k in RECALL_AT) + f"{'mean rank':>11}"
    rows = [("text → image", scores.text_to_image, scores.text_to_image_mean_rank),
            ("image → text", scores.image_to_text, scores.image_to_text_mean_rank)]
    lines = [f"{record['model']} on {record['backend']}: {scores.images} images, {scores.captions} captions"
             f" ({record['skipped']} images skipped)", f"{'':14}{header}"]
    lines += [f"{name:14}" + "".join(f"{recall[k]:8.4f}" for k in RECALL_AT) + f"{mean_rank:11.2f}"
              for name, recall, mean_rank in rows]
    return "\n".join(lines)

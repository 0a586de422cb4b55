"""`python -m indexer finetune`: tune a model on image-caption pairs and write a checkpoint for --checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from clipsearch.errors import ClipSearchError
from clipsearch.ingest.sources import Columns
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import RECALL_AT, read_pairs
from clipsearch.quality.finetune import EpochRecord, FinetuneConfig, finetune, save_checkpoint
from indexer.common import (
    DEFAULTS,
    Commands,
    Fail,
    add_image_arguments,
    add_model_arguments,
    check_weights,
    describe_error,
    non_negative_int,
    positive_int,
    pretrained_of,
)

TUNING = FinetuneConfig()


def config_of(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(loss=args.loss, margin=args.margin, lock_image=args.lock_image, lock_text=args.lock_text,
                          learning_rate=args.lr, warmup_steps=args.warmup, weight_decay=args.weight_decay,
                          epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate,
                          seed=args.seed, held_out=args.held_out, patience=args.patience,
                          max_minutes=args.max_minutes, workers=args.workers, max_pixels=args.max_pixels)


def add_parser(commands: Commands) -> None:
    command = commands.add_parser(
        "finetune", help="fine-tune a model on image-caption pairs; writes a checkpoint for --checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--pairs", type=Path, required=True, help="the same inputs as eval's --pairs")
    command.add_argument("--out", type=Path, required=True, help="the checkpoint file to write")
    add_model_arguments(command, DEFAULTS.model)
    command.add_argument("--loss", choices=["contrastive", "triplet"], default=TUNING.loss,
                         help="CLIP's symmetric InfoNCE, or a margin loss against the hardest in-batch negatives")
    command.add_argument("--margin", type=float, default=TUNING.margin, help="the triplet loss's margin")
    command.add_argument("--lock-image", action="store_true", help="train the text tower only (LiT-style)")
    command.add_argument("--lock-text", action="store_true", help="train the image tower only")
    command.add_argument("--lr", type=float, default=TUNING.learning_rate, help="peak learning rate")
    command.add_argument("--warmup", type=non_negative_int, default=TUNING.warmup_steps,
                         help="optimiser steps of linear warmup, before the cosine decay")
    command.add_argument("--weight-decay", type=float, default=TUNING.weight_decay, help="AdamW's weight decay")
    command.add_argument("--epochs", type=positive_int, default=TUNING.epochs, help="most passes over the pairs")
    command.add_argument("--batch-size", type=positive_int, default=TUNING.batch_size, help="pairs per batch")
    command.add_argument("--accumulate", type=positive_int, default=TUNING.accumulate,
                         help="batches per optimiser step (gradient accumulation)")
    command.add_argument("--held-out", type=float, default=TUNING.held_out,
                         help="images kept out for evaluation: a share below 1, or a count")
    command.add_argument("--patience", type=positive_int, default=TUNING.patience,
                         help="epochs without a better held-out text→image R@5 (or, at equal R@5, mean rank) before "
                              "stopping")
    command.add_argument("--max-minutes", type=float, default=None, help="stop training after this long")
    command.add_argument("--seed", type=int, default=TUNING.seed, help="the split, the order and the captions drawn")
    command.add_argument("--workers", type=non_negative_int, default=TUNING.workers,
                         help="image decoding worker processes")
    add_image_arguments(command)
    command.add_argument("--json", action="store_true", help="print the result as one JSON object")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def check(args: argparse.Namespace, fail: Fail) -> None:
    check_weights(args, fail)
    if args.lock_image and args.lock_text:
        fail("--lock-image and --lock-text together leave nothing to train")


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    progress = not args.no_progress and not args.json

    def report(record: EpochRecord) -> None:
        if progress:
            recall = record.scores["text_to_image"]
            print(f"epoch {record.epoch}: loss {record.loss:.4f}, {record.pairs_per_s:.0f} pairs/s, held-out "
                  f"text → image {', '.join(f'{name} {value:.4f}' for name, value in recall.items())}",
                  file=sys.stderr)

    try:
        corpus = read_pairs(args.pairs, Columns(image=args.image_column, caption=args.caption_column))
        # fp32 weights on a GPU too: mixed precision trains in fp16 on top of them.
        encoder = load_encoder(args.model, pretrained_of(args), args.checkpoint, args.device, backend="torch",
                               precision="fp32", text_language=args.text_language)
        result = finetune(encoder, corpus, config, progress=progress, on_epoch=report)
        metadata = {"base_model": encoder.ref.describe(), "model": encoder.ref.name, "pairs": str(args.pairs),
                    "arguments": {name: str(value) if value is not None else None
                                  for name, value in sorted(vars(args).items())},
                    "trained_at": datetime.now(UTC).isoformat(timespec="seconds"), **result.as_dict()}
        save_checkpoint(encoder, args.out, metadata)
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(metadata, indent=2))
        return 0
    before, after = result.before.text_to_image, result.after.text_to_image
    print(f"{result.train_images} images trained on, {result.held_out_images} held out; stopped: {result.stopped}; "
          f"kept epoch {result.best_epoch}")
    for label, recall in (("before", before), ("after", after)):
        print(f"  held-out text → image {label:6}" + "".join(f"  R@{k} {recall[k]:.4f}" for k in RECALL_AT))
    print(f"  chance: R@10 {min(1.0, 10 / result.held_out_images):.4f}")
    print(f"wrote {args.out}; use it with: python -m indexer build --model {encoder.ref.name} "
          f"--checkpoint {args.out} …")
    return 0

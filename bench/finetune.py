"""Fine-tuning the tiny model on the shapes corpus: held-out retrieval before and after, against chance.

    python -m bench.finetune --scenes 3200 --held-out 200 --max-minutes 5

Renders the shapes corpus (indexer.shapes), fine-tunes the offline tiny model from its random
weights with the contrastive loss for at most --max-minutes, and prints the held-out text→image
and image→text figures before and after, chance (R@k = k / held-out images for text→image), and
each epoch's loss, speed and held-out R@k as JSON lines. The issue's target: text→image R@10 ≥ 0.6
on 200 held-out images within 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit
from clipsearch.config import OFFLINE_MODEL
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import RECALL_AT, read_pairs
from clipsearch.quality.finetune import EpochRecord, FinetuneConfig, finetune
from indexer.shapes import write_shapes_corpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3200, help="scenes rendered (training + held out)")
    parser.add_argument("--held-out", type=int, default=200, help="scenes kept out for evaluation")
    parser.add_argument("--max-minutes", type=float, default=5.0, help="training time limit")
    parser.add_argument("--epochs", type=int, default=40, help="most epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        write_shapes_corpus(Path(scratch), args.scenes, args.seed)
        corpus = read_pairs(Path(scratch) / "images")
        emit("corpus", scenes=args.scenes, captions=len(corpus.captions), seconds=time.perf_counter() - started)
        encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device=args.device, backend="torch", precision="fp32")
        config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                held_out=args.held_out, patience=args.epochs, max_minutes=args.max_minutes,
                                seed=args.seed)
        started = time.perf_counter()

        def report(record: EpochRecord) -> None:
            emit("epoch", epoch=record.epoch, loss=record.loss, pairs_per_s=record.pairs_per_s,
                 seconds=time.perf_counter() - started, **record.scores["text_to_image"])

        result = finetune(encoder, corpus, config, progress=False, on_epoch=report)
    chance = {f"R@{k}": min(1.0, k / result.held_out_images) for k in RECALL_AT}
    emit("held-out text → image", before=result.before.as_dict()["text_to_image"],
         after=result.after.as_dict()["text_to_image"], chance=chance, best_epoch=result.best_epoch,
         stopped=result.stopped, train_seconds=time.perf_counter() - started, train_images=result.train_images,
         held_out_images=result.held_out_images)
    emit("held-out image → text", before=result.before.as_dict()["image_to_text"],
         after=result.after.as_dict()["image_to_text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

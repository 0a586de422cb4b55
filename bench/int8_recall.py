"""What int8 costs in retrieval: `indexer eval`'s figures for the fp32 and the int8 ONNX exports of
one model on the same pairs, and int8's loss against fp32, in the same run.

    python -m indexer demo-data --kind shapes --language en --out /tmp/evalset --count 1000 --seed 42
    python -m bench.int8_recall --pairs /tmp/evalset/images --model tiny-multilingual \
        --checkpoint indexer/demo_weights/tiny-multilingual-shapes.pt

The int8 export must pass a self-check (cosine 0.98 to PyTorch on fixed probes) before anything
runs it; where it fails, the server, the indexer and `indexer eval` run the fp32 export instead,
so they cannot measure int8 at all. This script lowers that floor to 0 for its own process only, to
measure what the floor keeps out; the self-check's worst cosine is in the log line that loading prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.common import emit
from clipsearch.model import onnx_backend
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import encoder_functions, evaluate, read_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True, help="a folder of images with caption sidecars")
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--onnx-cache", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the self-check's cosine, as loading logs it

    corpus = read_pairs(args.pairs)
    onnx_backend.MIN_COSINE["onnx-int8"] = 0.0  # this process only: see the docstring
    figures = {}
    for backend in ("onnx", "onnx-int8"):
        encoder = load_encoder(args.model, None, args.checkpoint, "cpu", backend=backend, onnx_cache=args.onnx_cache)
        if encoder.backend != backend:
            print(f"error: {backend} could not be loaded (the encoder runs {encoder.backend})", file=sys.stderr)
            return 1
        scores, _ = evaluate(corpus, *encoder_functions(encoder, args.batch_size, 0, 50_000_000, progress=False))
        figures[backend] = scores
        emit(f"{backend} retrieval", model=encoder.ref.describe(),
             images=scores.images, captions=scores.captions,
             text_to_image={f"R@{k}": round(value, 4) for k, value in scores.text_to_image.items()},
             image_to_text={f"R@{k}": round(value, 4) for k, value in scores.image_to_text.items()})
    fp32, int8 = figures["onnx"], figures["onnx-int8"]
    emit("int8 against fp32", text_to_image_loss={f"R@{k}": round(fp32.text_to_image[k] - int8.text_to_image[k], 4)
                                                  for k in fp32.text_to_image},
         image_to_text_loss={f"R@{k}": round(fp32.image_to_text[k] - int8.image_to_text[k], 4)
                             for k in fp32.image_to_text})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well the offline demo answers: "a red circle on the left" (「左边的红色圆形」) over the shapes corpus.

    python -m indexer demo-data --kind shapes --language both --out /tmp/shapes --count 3200
    python -m indexer finetune --pairs /tmp/shapes/images --out /tmp/shapes.pt --model tiny-multilingual ...
    python -m bench.demo_queries --images /tmp/shapes/images --model tiny-multilingual --checkpoint /tmp/shapes.pt

Embeds every scene with the model (from a checkpoint, or with random weights when none is given,
the baseline), asks all 90 queries "a {colour} {shape} {position}" in English and their Chinese
translations 「{position}的{colour}{shape}」, and prints for each language the share of top-5 images
whose first English caption names that colour and shape, and that colour, shape and position:
what a person typing such a query sees. Chance is about 1/18 and 1/90. Across languages it prints
how many of its top 10 a Chinese query shares with its English translation, on average.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import emit
from clipsearch.config import OFFLINE_MODEL
from clipsearch.model.factory import load_encoder
from clipsearch.util.images import read_image_file
from indexer.shapes import COLOURS, POSITIONS, SHAPES, ZH_COLOURS, ZH_POSITIONS, ZH_SHAPES

TOP = 5
SHARED_TOP = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True,
                        help="a shapes corpus (indexer demo-data --kind shapes), English captions first")
    parser.add_argument("--model", default=OFFLINE_MODEL, help=f"an offline model (default {OFFLINE_MODEL})")
    parser.add_argument("--checkpoint", type=Path, default=None, help="its fine-tuned weights (default: random)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    encoder = load_encoder(args.model, pretrained=None, checkpoint=args.checkpoint, device="cpu", backend="torch")
    paths = sorted(args.images.glob("*.png"))
    first_captions = [path.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0] for path in paths]
    views = torch.stack([encoder.prepare_image(read_image_file(path)) for path in paths])
    images = np.concatenate([encoder.encode_images(views[start:start + 512]) for start in range(0, len(views), 512)])
    queries = [(colour, shape, position) for colour in COLOURS for shape in SHAPES for position in POSITIONS]
    phrasings = {"en": [f"a {colour} {shape} {position}" for colour, shape, position in queries],
                 "zh": [f"{ZH_POSITIONS[position]}的{ZH_COLOURS[colour]}{ZH_SHAPES[shape]}"
                        for colour, shape, position in queries]}
    ranked = {language: np.argsort(-(encoder.encode_texts(texts) @ images.T), axis=1, kind="stable")
              for language, texts in phrasings.items()}
    for language, order in ranked.items():
        top = order[:, :TOP]
        kind = [[f"{colour} {shape}" in first_captions[row] for row in rows] for (colour, shape, _), rows in
                zip(queries, top, strict=True)]
        placed = [[f"{colour} {shape} {position}" in first_captions[row] for row in rows]
                  for (colour, shape, position), rows in zip(queries, top, strict=True)]
        emit(f"demo queries, {language}", model=encoder.ref.describe(), example=phrasings[language][0],
             scenes=len(paths), queries=len(queries), top=TOP, colour_and_shape=round(float(np.mean(kind)), 3),
             colour_shape_and_position=round(float(np.mean(placed)), 3),
             all_five_placed=round(float(np.mean([all(row) for row in placed])), 3))
    shared = [len(set(english[:SHARED_TOP]) & set(chinese[:SHARED_TOP]))
              for english, chinese in zip(ranked["en"], ranked["zh"], strict=True)]
    emit("demo queries across languages", model=encoder.ref.describe(), queries=len(queries), top=SHARED_TOP,
         shared_on_average=round(float(np.mean(shared)), 2), fewest_shared=int(np.min(shared)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

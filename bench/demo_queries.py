"""How well the offline demo answers: queries like "a red circle on the left" over the shapes corpus.

    python -m indexer demo-data --kind shapes --out /tmp/shapes --count 3200
    python -m indexer finetune --pairs /tmp/shapes/images --out /tmp/tiny-shapes.pt --model tiny ...
    python -m bench.demo_queries --images /tmp/shapes/images --checkpoint /tmp/tiny-shapes.pt

Embeds every scene with the model (the tiny model from a checkpoint, or with random weights when
none is given, the baseline), asks all 90 queries "a {colour} {shape} {position}", and prints the
share of top-5 images whose first caption names that colour and shape, and that colour, shape and
position: what a person typing such a query sees. Chance is about 1/18 and 1/90.
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
from indexer.shapes import COLOURS, POSITIONS, SHAPES

TOP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="a shapes corpus (indexer demo-data --kind shapes)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="the fine-tuned tiny model (default: random)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    encoder = load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=args.checkpoint, device="cpu", backend="torch")
    paths = sorted(args.images.glob("*.png"))
    first_captions = [path.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0] for path in paths]
    views = torch.stack([encoder.prepare_image(read_image_file(path)) for path in paths])
    images = np.concatenate([encoder.encode_images(views[start:start + 512]) for start in range(0, len(views), 512)])
    queries = [(colour, shape, position) for colour in COLOURS for shape in SHAPES for position in POSITIONS]
    texts = encoder.encode_texts([f"a {colour} {shape} {position}" for colour, shape, position in queries])
    top = np.argsort(-(texts @ images.T), axis=1, kind="stable")[:, :TOP]
    kind = [[f"{colour} {shape}" in first_captions[row] for row in rows] for (colour, shape, _), rows in
            zip(queries, top, strict=True)]
    placed = [[f"{colour} {shape} {position}" in first_captions[row] for row in rows]
              for (colour, shape, position), rows in zip(queries, top, strict=True)]
    emit("demo queries", model=encoder.ref.describe(), scenes=len(paths), queries=len(queries), top=TOP,
         colour_and_shape=round(float(np.mean(kind)), 3), colour_shape_and_position=round(float(np.mean(placed)), 3),
         all_five_placed=round(float(np.mean([all(row) for row in placed])), 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())

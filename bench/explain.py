"""How well heatmaps localise: MaskCLIP-style value-path features against the raw last-layer tokens.

    python -m bench.explain --scenes 600 --epochs 40

Fine-tunes the offline tiny model on the shapes corpus (indexer.shapes) until it knows its colours,
then renders, for every pair of the corpus's six colours, an image whose left half is one colour and
right half the other, and asks each method's heatmap for each colour's name. A pair counts as
localised when both colours light their own half more than the other half. Prints the share of
pairs each method localises, the mean margin (own half minus other half), and the time per
heatmap forward against a plain image embedding of the same batch (the extra cost of /explain).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import emit, ratio
from clipsearch.config import OFFLINE_MODEL
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import read_pairs
from clipsearch.quality.finetune import FinetuneConfig, finetune
from clipsearch.search.explain import METHODS, PatchFeatures, similarity_grids
from indexer.shapes import COLOURS, write_shapes_corpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=600, help="scenes rendered for fine-tuning")
    parser.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards of each kind")
    return parser.parse_args(argv)


def halves(left: str, right: str) -> Image.Image:
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[:, :64], pixels[:, 64:] = COLOURS[left], COLOURS[right]
    return Image.fromarray(pixels)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="torch")
    with tempfile.TemporaryDirectory() as folder:
        write_shapes_corpus(Path(folder), count=args.scenes, seed=5)
        config = FinetuneConfig(epochs=args.epochs, batch_size=32, learning_rate=2e-3, warmup_steps=20,
                                held_out=100, patience=args.epochs)
        result = finetune(encoder, read_pairs(Path(folder) / "images"), config, progress=False)
    encoder.model.eval()
    emit("fine-tuned", text_to_image_r10=result.after.text_to_image[10], epochs=args.epochs)
    patches = PatchFeatures(encoder.model)
    pairs = list(itertools.combinations(COLOURS, 2))
    views = torch.stack([encoder.prepare_image(halves(left, right)) for left, right in pairs])
    names = encoder.encode_texts(list(COLOURS))
    colour_vector = dict(zip(COLOURS, names, strict=True))
    for method in METHODS:
        features = patches(encoder.model_input(views), method)
        localised, margins = 0, []
        for number, (left, right) in enumerate(pairs):
            columns = features.shape[2] // 2
            left_grid = similarity_grids(features[number:number + 1], colour_vector[left])[0]
            right_grid = similarity_grids(features[number:number + 1], colour_vector[right])[0]
            left_margin = left_grid[:, :columns].mean() - left_grid[:, columns:].mean()
            right_margin = right_grid[:, columns:].mean() - right_grid[:, :columns].mean()
            localised += int(left_margin > 0 and right_margin > 0)
            margins += [float(left_margin), float(right_margin)]
        emit("localisation", method=method, pairs=len(pairs), localised=localised,
             share=round(localised / len(pairs), 3), mean_margin=round(float(np.mean(margins)), 4))
    batch = encoder.model_input(views)
    embed_s = _timed(lambda: encoder.encode_images(views), args.repeats)
    heatmap_s = _timed(lambda: patches(batch), args.repeats)
    emit("cost", batch=len(views), embed_ms=round(embed_s * 1000, 3), heatmap_ms=round(heatmap_s * 1000, 3),
         heatmap_over_embed=ratio(heatmap_s, embed_s))
    return 0


def _timed(call: Callable[[], object], repeats: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


if __name__ == "__main__":
    raise SystemExit(main())

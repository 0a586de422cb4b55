"""Text-tower speed: each batch trimmed to its real length against the full 77-token context, same run.

    python -m bench.encode --model ViT-B-32 --words 5 15 60 --batches 1 16

Loads the model with random weights (no download: speed does not depend on the weights) and, for
each query length and batch size, times ClipEncoder.encode_texts (trimmed wherever that is exact,
clipsearch.text_trim) against the same model's full-context encode_text, measured in the same run.
Prints one JSON line per figure, with the largest difference between the two embeddings.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import numpy as np
import torch

from bench.common import WORDS, emit, latency_summary, ratio, time_calls
from clipsearch.encoder import load_encoder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (random weights)")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--words", type=int, nargs="+", default=[5, 15, 60], help="words per query text")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="keep timing until this long has passed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    encoder = load_encoder(args.model, pretrained=None, device=args.device)
    emit("setup", model=args.model, device=str(encoder.device), trimmed=encoder.text_trim is not None,
         threads=torch.get_num_threads())

    def full_context(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            features = encoder.model.encode_text(encoder.tokenizer(texts).to(encoder.device)).float()
        return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()  # type: ignore[no-any-return]

    for words in args.words:
        for batch in args.batches:
            texts = [" ".join(WORDS[(row + word) % len(WORDS)] for word in range(words)) for row in range(batch)]
            tokens = int(encoder.tokenizer(texts).argmax(dim=-1).max()) + 1
            difference = float(np.abs(encoder.encode_texts(texts) - full_context(texts)).max())
            baseline = latency_summary(time_calls(partial(full_context, texts), args.repeats,
                                                  min_seconds=args.min_seconds))
            mine = latency_summary(time_calls(partial(encoder.encode_texts, texts), args.repeats,
                                              min_seconds=args.min_seconds))
            emit("text tower", words=words, tokens=tokens, batch=batch, trimmed_ms=mine["p50_ms"],
                 full_context_ms=baseline["p50_ms"], speedup=ratio(baseline["p50_ms"], mine["p50_ms"]),
                 max_difference=difference)
    return 0


if __name__ == "__main__":
    sys.exit(main())

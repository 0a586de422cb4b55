"""What int8 costs in retrieval: `indexer eval`'s figures for the fp32 and the int8 ONNX exports of
one model on the same pairs, and int8's loss against fp32, in the same run.

    python -m indexer demo-data --kind shapes --language en --out /tmp/evalset --count 1000 --seed 42
    python -m indexer demo-data --kind shapes --language en --out /tmp/calibration --count 64 --seed 7
    python -m bench.int8_recall --pairs /tmp/evalset/images --calibration /tmp/calibration/images \
        --model tiny-multilingual --checkpoint indexer/demo_weights/tiny-multilingual-shapes.pt

int8 is calibrated on --calibration (clipsearch.model.int8): other scenes of the same kind as the
pairs, as a collection's own images would be; without it, on the pairs themselves. --dynamic also
scores ONNX Runtime's dynamic int8 (scales from each batch's range: what onnx-int8 was before
calibration), batched as `indexer eval` batches, for comparison.

The int8 export must pass a self-check (cosine 0.98 to PyTorch on fixed probes) before anything
runs it; where it fails, the server, the indexer and `indexer eval` run the fp32 export instead,
so they cannot measure int8 at all. This script lowers that floor to 0 for its own process only, to
measure what the floor keeps out; the self-check's worst cosine is in each figure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from bench.common import emit
from clipsearch.model import onnx_backend
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.onnx_backend import OnnxTowers, cache_key, default_cache_dir, load_towers
from clipsearch.quality.evaluate import PairedCorpus, RetrievalScores, encoder_functions, evaluate, read_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True, help="a folder of images with caption sidecars")
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--onnx-cache", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--calibration", type=Path, default=None,
                        help="the folder int8 is calibrated on (default: the pairs themselves)")
    parser.add_argument("--dynamic", action="store_true", help="also score dynamic int8 (scales from each batch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    onnx_cache = args.onnx_cache or default_cache_dir()

    corpus = read_pairs(args.pairs)
    onnx_backend.MIN_COSINE["onnx-int8"] = 0.0  # this process only: see the docstring
    figures: dict[str, RetrievalScores] = {}
    for backend in ("onnx", "onnx-int8"):
        encoder = load_encoder(args.model, None, args.checkpoint, "cpu", backend=backend, onnx_cache=onnx_cache,
                               int8_calibration=args.calibration or args.pairs)
        if encoder.backend != backend:
            print(f"error: {backend} could not be loaded (the encoder runs {encoder.backend})", file=sys.stderr)
            return 1
        figures[backend] = score(corpus, encoder, backend, args.batch_size)
        if backend == "onnx" and args.dynamic:
            with tempfile.TemporaryDirectory() as work:
                towers = dynamic_int8(onnx_cache / cache_key(encoder, "onnx"), Path(work), encoder.threads)
                encoder.set_towers(towers.encode_image, towers.encode_text, "onnx-int8-dynamic")
                encoder.backend_cosine = None  # not self-checked: it never serves
                figures["dynamic"] = score(corpus, encoder, "onnx-int8-dynamic", args.batch_size)
    fp32 = figures["onnx"]
    for name, label in (("onnx-int8", "int8 against fp32"), ("dynamic", "dynamic int8 against fp32")):
        if name in figures:
            int8 = figures[name]
            emit(label, text_to_image_loss={f"R@{k}": round(fp32.text_to_image[k] - int8.text_to_image[k], 4)
                                            for k in fp32.text_to_image},
                 image_to_text_loss={f"R@{k}": round(fp32.image_to_text[k] - int8.image_to_text[k], 4)
                                     for k in fp32.image_to_text})
    return 0


def score(corpus: PairedCorpus, encoder: ClipEncoder, label: str, batch_size: int) -> RetrievalScores:
    scores, _ = evaluate(corpus, *encoder_functions(encoder, batch_size, 0, 50_000_000, progress=False))
    emit(f"{label} retrieval", model=encoder.ref.describe(), self_check_cosine=encoder.backend_cosine,
         images=scores.images, captions=scores.captions,
         text_to_image={f"R@{k}": round(value, 4) for k, value in scores.text_to_image.items()},
         image_to_text={f"R@{k}": round(value, 4) for k, value in scores.image_to_text.items()})
    return scores


def dynamic_int8(fp32: Path, work: Path, threads: int) -> OnnxTowers:
    """The fp32 export in `fp32` quantised as onnx-int8 was before calibration: ONNX Runtime's dynamic
    quantisation of the matrix products, each layer's input scaled by its whole batch's range."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for tower in ("image", "text"):
        quantize_dynamic(fp32 / f"{tower}.onnx", work / f"{tower}.onnx", weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=True)
    return load_towers(work, threads)



if __name__ == "__main__":
    sys.exit(main())

"""Tower speed on each backend, against eager PyTorch measured in the same run.

    python -m bench.encode --model ViT-B-32 --words 5 15 60 --batches 1 16 \
        --backends torch onnx onnx-int8 openvino openvino-int8
    python -m bench.encode --languages

With --languages it times one query and one image instead, on PyTorch, for the multilingual presets
(bench.architectures: their architectures rebuilt offline): a Chinese query 「左边的红色圆形」 on
xlm-roberta-base-ViT-B-32, xlm-roberta-large-ViT-H-14 and chinese-clip-vit-base-patch16 against the
English query "a red circle on the left" on ViT-B-32, the default, as ratios measured in the same run.

Loads the model with random weights (no download: speed does not depend on the weights) once per
backend (clipsearch.model.onnx_backend: ONNX exports are cached in --onnx-cache), then times:
  * the text tower, for each query length and batch size: ClipEncoder.encode_texts on each backend
    (trimmed to the batch's real length wherever that is exact, clipsearch.model.text_trim) against
    PyTorch's encode_text on the full 77-token context, the baseline;
  * the image tower, for each batch size: ClipEncoder.encode_images on prepared pixels, on each
    backend, against the PyTorch backend.
Each figure carries the lowest cosine between the backend's embeddings and the baseline's. One JSON
line per figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import architectures
from bench.common import WORDS, emit, latency_summary, ratio, time_calls
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.onnx_backend import BACKENDS, default_cache_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (random weights)")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--backends", nargs="+", choices=[name for name in BACKENDS if name != "auto"],
                        default=["torch", "onnx"], help="backends to time ('torch' is always timed: the baseline)")
    parser.add_argument("--onnx-cache", type=Path, default=default_cache_dir(), help="where ONNX exports are kept")
    parser.add_argument("--int8-calibration", type=Path, default=None,
                        help="the folder onnx-int8 is calibrated on (default: 16 generated photos and queries; "
                             "speed does not depend on it)")
    parser.add_argument("--words", type=int, nargs="+", default=[5, 15, 60], help="words per query text")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="texts or images per forward pass")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="keep timing until this long has passed")
    parser.add_argument("--languages", action="store_true",
                        help="time a Chinese query on the multilingual presets against an English one on ViT-B-32")
    parser.add_argument("--presets", nargs="+", default=list(LANGUAGE_PRESETS), choices=list(LANGUAGE_PRESETS),
                        help="the multilingual presets --languages times")
    return parser.parse_args(argv)


LANGUAGE_PRESETS = ("xlm-roberta-base-ViT-B-32", "chinese-clip-vit-base-patch16", "xlm-roberta-large-ViT-H-14")
ENGLISH_QUERY, CHINESE_QUERY = "a red circle on the left", "左边的红色圆形"


def compare_languages(args: argparse.Namespace) -> int:
    """One query and one image per preset, against one English query and one image on ViT-B-32."""
    photo = photos(1)

    def one_query_and_one_image(encoder: ClipEncoder, query: str) -> tuple[float, float]:
        pixels = torch.stack([encoder.prepare_image(photo[0])])
        return (latency_summary(time_calls(partial(encoder.encode_texts, [query]), args.repeats,
                                           min_seconds=args.min_seconds))["p50_ms"],
                latency_summary(time_calls(partial(encoder.encode_images, pixels), args.repeats,
                                           min_seconds=args.min_seconds))["p50_ms"])

    default = load_encoder("ViT-B-32", pretrained=None, device="cpu", backend="torch")
    english_ms, image_ms = one_query_and_one_image(default, ENGLISH_QUERY)
    emit("one query, english", model="ViT-B-32", query=ENGLISH_QUERY, threads=torch.get_num_threads(),
         text_ms=english_ms, image_ms=image_ms)
    with tempfile.TemporaryDirectory() as work:
        for preset in args.presets:
            encoder = (architectures.chinese_clip_base(Path(work)) if preset == "chinese-clip-vit-base-patch16"
                       else architectures.open_clip_preset(preset, Path(work)))
            text_ms, preset_image_ms = one_query_and_one_image(encoder, CHINESE_QUERY)
            emit("one query, chinese", model=preset, query=CHINESE_QUERY,
                 tokens=int(tokens_of(encoder, CHINESE_QUERY)), text_ms=text_ms, image_ms=preset_image_ms,
                 text_vs_english_on_default=ratio(text_ms, english_ms),
                 image_vs_default=ratio(preset_image_ms, image_ms),
                 parameters_m=round(sum(parameter.numel() for parameter in encoder.model.parameters()) / 1e6, 1))
            del encoder
    return 0


def tokens_of(encoder: ClipEncoder, text: str) -> int:
    """How many tokens the text tower runs for `text` (its real length where the tower is trimmed)."""
    tokens = encoder.tokenizer([text])
    return encoder.text_trim.real_length(tokens) if encoder.text_trim is not None else int(tokens.shape[1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    if args.languages:
        return compare_languages(args)
    backends = ["torch", *(name for name in args.backends if name != "torch")]
    with tempfile.TemporaryDirectory() as work:
        calibration = args.int8_calibration or calibration_folder(Path(work))
        encoders = {backend: load_encoder(args.model, pretrained=None, device=args.device, backend=backend,
                                          onnx_cache=args.onnx_cache, int8_calibration=calibration)
                    for backend in backends}
    reference = encoders["torch"]
    emit("setup", model=args.model, device=str(reference.device), trimmed=reference.text_trim is not None,
         threads=torch.get_num_threads(), backends={name: encoder.backend for name, encoder in encoders.items()})

    def timed(call: partial[np.ndarray]) -> float:
        return latency_summary(time_calls(call, args.repeats, min_seconds=args.min_seconds))["p50_ms"]

    for words in args.words:
        for batch in args.batches:
            texts = [" ".join(WORDS[(row + word) % len(WORDS)] for word in range(words)) for row in range(batch)]
            tokens = int(reference.tokenizer(texts).argmax(dim=-1).max()) + 1
            expected = full_context(reference, texts)
            baseline = timed(partial(full_context, reference, texts))
            fp32_onnx_ms = None
            for backend, encoder in encoders.items():
                milliseconds = timed(partial(encoder.encode_texts, texts))
                fp32_onnx_ms = milliseconds if backend == "onnx" else fp32_onnx_ms
                emit(f"text tower, {backend}", words=words, tokens=tokens, batch=batch, ms=milliseconds,
                     full_context_ms=baseline, speedup=ratio(baseline, milliseconds),
                     **against_onnx(backend, fp32_onnx_ms, milliseconds),
                     min_cosine=min_cosine(encoder.encode_texts(texts), expected))
    for batch in args.batches:
        pixels = torch.stack([reference.prepare_image(photo) for photo in photos(batch)])
        expected = reference.encode_images(pixels)
        baseline = timed(partial(reference.encode_images, pixels))
        fp32_onnx_ms = None
        for backend, encoder in encoders.items():
            milliseconds = timed(partial(encoder.encode_images, pixels))
            fp32_onnx_ms = milliseconds if backend == "onnx" else fp32_onnx_ms
            emit(f"image tower, {backend}", batch=batch, ms=milliseconds, torch_ms=baseline,
                 speedup=ratio(baseline, milliseconds), **against_onnx(backend, fp32_onnx_ms, milliseconds),
                 min_cosine=min_cosine(encoder.encode_images(pixels), expected))
    return 0


def full_context(encoder: ClipEncoder, texts: list[str]) -> np.ndarray:
    """The baseline: open_clip's encode_text on the whole context, in PyTorch, normalised like the encoder."""
    with torch.inference_mode():
        features = encoder.model.encode_text(encoder.tokenizer(texts).to(encoder.device)).float()
    return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()  # type: ignore[no-any-return]


def min_cosine(found: np.ndarray, expected: np.ndarray) -> float:
    return float((found * expected).sum(axis=1).min())  # rows are unit vectors


def against_onnx(backend: str, onnx_ms: float | None, milliseconds: float) -> dict[str, float | None]:
    """An exported backend's speed-up over ONNX Runtime's fp32 export timed just before it (int8,
    OpenVINO), where both ran."""
    return {"vs_onnx": ratio(onnx_ms, milliseconds)} if backend not in ("torch", "onnx") and onnx_ms else {}


def calibration_folder(work: Path) -> Path:
    """16 generated photos and a texts.txt of queries, for an int8 export timed only for speed."""
    folder = work / "calibration"
    folder.mkdir()
    for number, photo in enumerate(photos(16)):
        photo.save(folder / f"photo{number}.jpg")
    (folder / "texts.txt").write_text("\n".join(" ".join(WORDS[row:row + 8]) for row in range(32)))
    return folder


def photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480))
            for _ in range(count)]


if __name__ == "__main__":
    sys.exit(main())

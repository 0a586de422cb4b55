"""int8 that keeps its answers: both towers quantised with static scales calibrated on the collection.

Two measured reasons shape it (docs/benchmarks.md, "int8 that keeps its answers"):

- **Static, not dynamic.** ONNX Runtime's dynamic quantisation scales each layer's input by the range
  of the whole batch, so a text's vector depended on the texts encoded beside it. Identical captions
  then got different vectors in different batches: on the shapes eval image → text R@1 fell from
  0.683 (fp32) to 0.312 in batches of 64, and was 0.681 one text at a time. Static scales are fixed
  when the towers are exported, so a row's vector is the same alone or in any batch, and the
  quantised matrix products still run as ONNX Runtime's fused int8 kernels.
- **Calibrated on the collection's own images and texts.** The scales are the ranges each layer's
  input takes over a sample of them (MinMax). How much the sample matters depends on the recipe:
  one that also quantised attention's products and requantised outputs lost 0.09 of text → image
  R@10 and 0.17 of image → text calibrated on random noise, while its self-check's cosine to
  PyTorch was still 0.9985; this one lost at most 0.007 on the same noise. A self-check does not
  judge a calibration, retrieval does (bench.int8_recall), so the sample is the collection's own.

Weights are int8 per output channel. Only the matrix products by weights are quantised: not the
patch convolution (no speed, some accuracy), nor attention's products of two activations (queries by
keys, weights by values: small, and quantising them measured less exact and no faster on ViT-B-32).
Their outputs stay float, so each runs as one MatMulIntegerToFloat with no requantisation (cosine to
PyTorch 0.9994 against 0.9988 requantised). onnxruntime (the [onnx] extra) calibrates and quantises.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.util.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

T = TypeVar("T")

FIELD = "int8_calibration"

SAMPLE_IMAGES = 64
"""Images a calibration reads at most, spread evenly over the folder: the ranges settle well before
(64 shapes scenes kept R@10 within 0.003 of fp32 on 1,000 others)."""

SAMPLE_TEXTS = 256

BATCH = 16
"""Images or texts per calibration forward pass."""

RECIPE = 1
"""Part of an int8 export's cache key: raise it when how the towers are quantised changes."""

GENERIC_QUERIES = (
    "a photo of a dog", "a cat sleeping on a sofa", "a red car parked on the street", "a bowl of fruit on a table",
    "two people walking on a beach at sunset", "a city skyline at night", "a close-up of a flower",
    "a screenshot of a web page", "a handwritten note on paper", "a mountain lake in winter",
    "a birthday cake with candles", "a child playing football in a park", "an old building with a clock tower",
    "the receipt from a restaurant", "a diagram with arrows and labels", "一只猫坐在沙发上", "海边的日落",
)
"""The texts a calibration folder without any .txt file is calibrated with: short queries like a
search box's, in the languages the multilingual models are used in."""


@dataclass(frozen=True)
class CalibrationSample:
    """What an int8 export is calibrated on: images of the collection, and texts (its captions)."""

    folder: Path
    images: tuple[Path, ...]
    texts: tuple[str, ...]

    def digest(self) -> str:
        """Names the sample by its content (each image's bytes, each text), for the export's cache key."""
        hasher = hashlib.sha256()
        for path in self.images:
            hasher.update(hashlib.sha256(path.read_bytes()).digest())
        for text in self.texts:
            hasher.update(hashlib.sha256(text.encode()).digest())
        return hasher.hexdigest()[:16]

    def decoded_images(self) -> Iterator[Image.Image]:
        """The sample's images as RGB, those that cannot be decoded left out with a warning."""
        for path in self.images:
            try:
                with Image.open(path) as image:
                    yield image.convert("RGB")
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
                log.warning("int8 calibration leaves out %s: %s", path, error)


def read_calibration(folder: Path, max_images: int = SAMPLE_IMAGES, max_texts: int = SAMPLE_TEXTS
                     ) -> CalibrationSample:
    """A sample of `folder` (searched recursively): up to `max_images` images and `max_texts` lines of
    its .txt files (captions beside their images, or a texts.txt), each spread evenly over the sorted
    files so that a folder of several kinds is sampled across all of them. Without any text the
    sample's texts are GENERIC_QUERIES. Raises ModelLoadError (field 'int8_calibration') for a
    missing folder or one without images."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder: int8 is calibrated on a folder of the collection's own "
                             "images and captions", FIELD)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ModelLoadError(f"{folder} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}) to calibrate int8 on",
                             FIELD)
    lines = [line.strip() for path in files if path.suffix.lower() == ".txt"
             for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return CalibrationSample(folder, tuple(_spread(images, max_images)),
                             tuple(_spread(lines, max_texts)) if lines else GENERIC_QUERIES)


def _spread(items: list[T], count: int) -> list[T]:
    """`count` of `items` at evenly spaced positions (all of them when there are no more)."""
    if len(items) <= count:
        return items
    return [items[int(position)] for position in np.linspace(0, len(items) - 1, count).round()]


def tower_inputs(encoder: ClipEncoder, sample: CalibrationSample) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The image tower's and the text tower's inputs for `sample`, in batches, exactly as the encoder
    hands them to its towers (normalised pixels; tokens cut to each batch's real length where that
    is exact): recorded from its own encode calls, so calibration sees what serving will."""
    pixels: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    image_forward, text_forward = encoder.towers

    def recording(inputs: list[np.ndarray], forward: Callable[[torch.Tensor], torch.Tensor]
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(batch: torch.Tensor) -> torch.Tensor:
            inputs.append(batch.detach().cpu().contiguous().numpy().copy())
            return forward(batch)
        return run

    backend = encoder.backend
    encoder.set_towers(recording(pixels, image_forward), recording(tokens, text_forward), backend)
    try:
        images = list(sample.decoded_images())
        for start in range(0, len(images), BATCH):
            encoder.encode_images(images[start:start + BATCH])
        for start in range(0, len(sample.texts), BATCH):
            encoder.encode_texts(sample.texts[start:start + BATCH])
    finally:
        encoder.set_towers(image_forward, text_forward, backend)
    if not pixels:
        raise ModelLoadError(f"no image of {sample.folder} could be decoded to calibrate int8 on", FIELD)
    return pixels, tokens


def quantise_towers(encoder: ClipEncoder, fp32: Path, target: Path, sample: CalibrationSample) -> None:
    """Write int8 image.onnx and text.onnx into `target` from the fp32 export in `fp32`, their
    activation scales calibrated on `sample`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
        def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
            self._feeds = iter([{input_name: batch} for batch in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    pixels, tokens = tower_inputs(encoder, sample)
    log.info("calibrating int8 on %d images and %d texts of %s", sum(len(batch) for batch in pixels),
             sum(len(batch) for batch in tokens), sample.folder)
    for tower, input_name, batches in (("image", "pixels", pixels), ("text", "tokens", tokens)):
        source = fp32 / f"{tower}.onnx"
        quantize_static(str(source), str(target / f"{tower}.onnx"), Batches(input_name, batches),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                        nodes_to_exclude=products_of_activations(source), calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=True,
                        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})


def products_of_activations(path: Path) -> list[str]:
    """The matrix products in the model at `path` with no weight among their inputs (attention's)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {initializer.name for initializer in graph.initializer} | {
        output for node in graph.node if node.op_type == "Constant" for output in node.output}
    return [node.name for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and not constants.intersection(node.input[:2])]

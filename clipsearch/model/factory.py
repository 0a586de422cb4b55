"""load_encoder(): a model name plus a pretrained tag or a checkpoint file, and a device, give an encoder.

The one place that builds encoders: it picks the model's family (open_clip, or Chinese-CLIP through
transformers: clipsearch.model.chinese_clip) and what runs its towers (PyTorch, or ONNX Runtime
through clipsearch.model.onnx_backend), so neither the encoder nor the ONNX backend imports the other's
construction, and the encoder never knows the family.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import open_clip
import torch

from clipsearch.config import (
    CHINESE_CLIP_MODELS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    MULTILINGUAL_OFFLINE_MODEL,
    OFFLINE_MODEL,
    RANDOM_WEIGHTS_SEED,
    ModelRef,
)
from clipsearch.errors import ModelLoadError
from clipsearch.model.chinese_clip import is_chinese_clip, load_chinese_clip
from clipsearch.model.encoder import ClipEncoder, resolve_device
from clipsearch.model.int8 import read_calibration
from clipsearch.model.onnx_backend import resolve_backend, use_fastest, use_onnx
from clipsearch.model.preprocess import PreprocessConfig
from clipsearch.util.files import file_sha256

log = logging.getLogger(__name__)


def load_encoder(model_name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 checkpoint: Path | None = None, device: str | None = None, backend: str = "torch",
                 onnx_cache: Path | None = None, threads: int | None = None, text_trim: bool = True,
                 precision: str | None = None, text_language: str | None = None,
                 int8_calibration: Path | None = None) -> ClipEncoder:
    """Build an encoder from an open_clip model name plus a pretrained tag or a local checkpoint file.

    With neither (the `tiny` model, typically) the weights are random but seeded, so two loads
    give the same embeddings. The model runs on CUDA when available (in fp16), else on the CPU.
    `backend` (clipsearch.model.onnx_backend.BACKENDS) may move the towers to ONNX Runtime on the CPU,
    exported into `onnx_cache`; `threads` sets the intra-op threads of either backend. `text_trim`
    False runs the text tower on its full context even where trimming is exact (for comparisons).
    `precision` 'fp32' keeps fp32 weights on a GPU too (for training). `text_language` is the language
    code a tokenizer that takes one is told (NLLB's: 'zho_Hans', 'eng_Latn'; None: its default).
    `int8_calibration` is the folder of the collection's images (and captions) that the int8 backends
    ('onnx-int8', 'openvino-int8') are calibrated on (clipsearch.model.int8); they refuse to load without one.
    """
    if (model_name not in open_clip.list_models() and not is_chinese_clip(model_name)
            and not model_name.startswith(("hf-hub:", "local-dir:"))):
        raise ModelLoadError(f"unknown model {model_name!r}; open_clip knows e.g. "
                             f"{', '.join(sorted(open_clip.list_models())[:5])}, …, the offline {OFFLINE_MODEL!r} "
                             f"and {MULTILINGUAL_OFFLINE_MODEL!r}, and Chinese-CLIP's "
                             f"{', '.join(name for name in CHINESE_CLIP_MODELS)}", "model")
    if checkpoint is not None and pretrained:
        raise ModelLoadError("give either a pretrained tag or a checkpoint file, not both")
    torch_device = resolve_device(device)
    backend = resolve_backend(backend, torch_device)
    calibration = None
    if backend.endswith("-int8"):  # read before the model loads: a wrong folder fails at once
        if int8_calibration is None:
            raise ModelLoadError("int8 is calibrated on a sample of the collection's own images and captions: name "
                                 "a folder of them (--int8-calibration, CLIPSEARCH_INT8_CALIBRATION), such as the "
                                 "images folder the collection is built from", "int8_calibration")
        calibration = read_calibration(int8_calibration)
    if threads is not None:
        torch.set_num_threads(threads)
    weights: str | None = pretrained or None
    ref = ModelRef(model_name, pretrained=weights)
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ModelLoadError(f"no file at {checkpoint}", "checkpoint")
        weights = str(checkpoint)
        ref = ModelRef(model_name, checkpoint_sha256=file_sha256(checkpoint))
    precision = precision or ("fp16" if torch_device.type == "cuda" else "fp32")

    def create() -> tuple[Any, Any, PreprocessConfig | None]:
        try:
            # Seed a private copy of the RNG so random weights are reproducible without touching
            # the caller's random state (and built again the same, for ClipEncoder.model).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                if is_chinese_clip(model_name):
                    model, tokenizer, preprocess = load_chinese_clip(model_name, pretrained or None, checkpoint)
                    return model.to(torch_device, torch.float16 if precision == "fp16" else torch.float32), \
                        tokenizer, preprocess
                # A Hugging Face text tower's own pretrained weights are never fetched: the weights
                # come from the CLIP checkpoint, or are random.
                model = open_clip.create_model(model_name, pretrained=weights, device=torch_device,
                                               precision=precision, pretrained_text=False)
                return model, open_clip.get_tokenizer(model_name), None
        except ModelLoadError:
            raise
        except Exception as error:  # open_clip and transformers raise many kinds (OSError, HTTP errors, KeyError)
            raise ModelLoadError(f"cannot load {ref.describe()}: {error}") from error

    model, tokenizer, preprocess = create()
    _set_language(tokenizer, text_language)
    model.eval()
    log.info("loaded %s on %s", ref.describe(), torch_device)
    encoder = ClipEncoder(model, tokenizer, ref, torch_device, text_trim=text_trim, preprocess_config=preprocess,
                          reload=lambda: create()[0])
    if backend == "auto":  # both ONNX Runtime and OpenVINO installed: the faster on this machine
        use_fastest(encoder, onnx_cache, threads)
    elif backend != "torch":
        use_onnx(encoder, backend, onnx_cache, threads, calibration)
    return encoder


def _set_language(tokenizer: object, language: str | None) -> None:
    """Tell a tokenizer that takes a source language (NLLB's) which one the texts are in."""
    if language is None:
        return
    set_language = getattr(tokenizer, "set_lang_fn", None)  # open_clip's HFTokenizer keeps it when there is one
    if set_language is None:
        raise ModelLoadError(f"this model's tokenizer takes no language; leave the text language unset "
                             f"(it was {language!r})", "text_language")
    try:
        set_language(language)
    except (KeyError, ValueError) as error:
        raise ModelLoadError(f"the tokenizer does not know the language {language!r}: {error}",
                             "text_language") from error

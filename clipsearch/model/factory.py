"""load_encoder(): a model name plus a pretrained tag or a checkpoint file, and a device, give an encoder.

The one place that builds encoders and chooses what runs their towers (PyTorch, or ONNX Runtime
through clipsearch.model.onnx_backend), so neither the encoder nor the ONNX backend imports the other's
construction.
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

from clipsearch.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, OFFLINE_MODEL, RANDOM_WEIGHTS_SEED, ModelRef
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder, resolve_device
from clipsearch.model.onnx_backend import resolve_backend, use_onnx
from clipsearch.util.files import file_sha256

log = logging.getLogger(__name__)


def load_encoder(model_name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 checkpoint: Path | None = None, device: str | None = None, backend: str = "torch",
                 onnx_cache: Path | None = None, threads: int | None = None, text_trim: bool = True,
                 precision: str | None = None) -> ClipEncoder:
    """Build an encoder from an open_clip model name plus a pretrained tag or a local checkpoint file.

    With neither (the `tiny` model, typically) the weights are random but seeded, so two loads
    give the same embeddings. The model runs on CUDA when available (in fp16), else on the CPU.
    `backend` (clipsearch.model.onnx_backend.BACKENDS) may move the towers to ONNX Runtime on the CPU,
    exported into `onnx_cache`; `threads` sets the intra-op threads of either backend. `text_trim`
    False runs the text tower on its full context even where trimming is exact (for comparisons).
    `precision` 'fp32' keeps fp32 weights on a GPU too (for training).
    """
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ModelLoadError(f"unknown model {model_name!r}; open_clip knows e.g. "
                             f"{', '.join(sorted(open_clip.list_models())[:5])}, … and {OFFLINE_MODEL!r}", "model")
    if checkpoint is not None and pretrained:
        raise ModelLoadError("give either a pretrained tag or a checkpoint file, not both")
    torch_device = resolve_device(device)
    backend = resolve_backend(backend, torch_device)
    if threads is not None:
        torch.set_num_threads(threads)
    weights: str | None = pretrained or None
    ref = ModelRef(model_name, pretrained=weights)
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ModelLoadError(f"no file at {checkpoint}", "checkpoint")
        weights = str(checkpoint)
        ref = ModelRef(model_name, checkpoint_sha256=file_sha256(checkpoint))
    try:
        # Seed a private copy of the RNG so random weights are reproducible without touching
        # the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = open_clip.create_model(model_name, pretrained=weights, device=torch_device,
                                           precision=precision or ("fp16" if torch_device.type == "cuda" else "fp32"))
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as error:  # open_clip raises many kinds (RuntimeError, HTTP errors, KeyError)
        raise ModelLoadError(f"cannot load {ref.describe()}: {error}") from error
    model.eval()
    log.info("loaded %s on %s", ref.describe(), torch_device)
    encoder = ClipEncoder(model, tokenizer, ref, torch_device, text_trim=text_trim)
    if backend != "torch":
        use_onnx(encoder, backend, onnx_cache, threads)
    return encoder

"""The audio model: CLAP (transformers' ClapModel) embeds sounds and English texts into a space of its own.

A collection's sounds are searched by text through CLAP's own text tower, never the image model's:
the two models' spaces do not compare. CLAP reads a fixed window (10 s at 48 kHz for LAION's
models) as a 64-bin log-mel spectrogram; shorter windows are repeated to fill it, as CLAP was
trained ("repeatpad"). Windows are never longer than the model's, so its random crop of longer
input never runs and an embedding is the same every time. It needs transformers, which the
`[audio]` extra installs; without it, loading fails with a message that names the extra.

The offline `tiny-clap` (model_configs/hf/, scripts/make-tiny-towers) has random, seeded weights and
the real model's feature extractor, for tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsearch.config import OFFLINE_AUDIO_MODEL, RANDOM_WEIGHTS_SEED, ModelRef
from clipsearch.errors import InvalidQuery, ModelLoadError
from clipsearch.model.encoder import resolve_device, weights_dtype
from clipsearch.util.languages import reads_as_latin

OFFLINE_DIR = Path(__file__).parent / "model_configs" / "hf" / OFFLINE_AUDIO_MODEL
EXTRA_HINT = "sound search needs the [audio] extra: pip install 'clipsearch[audio]'"

log = logging.getLogger(__name__)


class AudioEncoder:
    """A CLAP model with its feature extractor and tokenizer: unit vectors of sounds and texts.

    Thread-safe: one forward pass at a time (the model's own lock).
    """

    def __init__(self, model: Any, features: Any, tokenizer: Any, ref: ModelRef, device: torch.device,
                 max_text_tokens: int) -> None:
        self.model, self.features, self.tokenizer, self.ref, self.device = model, features, tokenizer, ref, device
        self.max_text_tokens = max_text_tokens
        self.dtype = weights_dtype(model)
        self.sampling_rate = int(features.sampling_rate)
        self.window_s = float(features.nb_max_samples) / self.sampling_rate
        self._lock = threading.Lock()
        self.embedding_dim: int = int(self.encode_texts(["probe"]).shape[1])

    @torch.inference_mode()
    def encode_audio(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Unit vectors (float32 (n, d)) of mono windows at `sampling_rate`, none longer than `window_s`."""
        if not windows:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        longest = max(len(window) for window in windows)
        if longest > self.features.nb_max_samples:
            raise ValueError(f"a window of {longest} samples is longer than the model's {self.features.nb_max_samples}")
        # A silent (or empty) window is padded with silence: repeating nothing gives nothing to read.
        filled = [window if len(window) and np.any(window) else np.zeros(self.features.nb_max_samples, np.float32)
                  for window in windows]
        features = self.features(filled, sampling_rate=self.sampling_rate, return_tensors="pt")["input_features"]
        with self._lock:
            embedded = self.model.get_audio_features(input_features=features.to(self.device, self.dtype))
        return _unit(embedded)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (float32 (n, d)) of texts, through the audio model's own text tower."""
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_tokens,
                                return_tensors="pt")
        with self._lock:
            embedded = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                                    attention_mask=tokens.attention_mask.to(self.device))
        return _unit(embedded)

    @staticmethod
    def check_language(text: str, field: str) -> None:
        """Refuse a text mostly outside the Latin script, naming `field`: LAION's CLAP models read English
        only (their text tower is RoBERTa, trained on English captions), and would embed it as noise."""
        if not reads_as_latin(text):
            raise InvalidQuery(field, "the audio model reads English only: search sounds in English, or by their "
                                      "captions' words in any language (mode 'keyword')")

    def is_truncated(self, text: str) -> bool:
        """Whether `text` is longer than the text tower reads (its end is dropped)."""
        return len(self.tokenizer(text, truncation=False).input_ids) > self.max_text_tokens


def _unit(embedded: torch.Tensor) -> np.ndarray:
    vectors = torch.nn.functional.normalize(embedded.float(), dim=-1)
    return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)


def describe(model_name: str) -> str:
    return f"{model_name} (random weights, seed {RANDOM_WEIGHTS_SEED})" if model_name == OFFLINE_AUDIO_MODEL \
        else model_name


def load_audio_encoder(model_name: str, device: str | None = None, half: bool | None = None) -> AudioEncoder:
    """Load a CLAP model by Hugging Face repository id or local directory, or the offline `tiny-clap`;
    ModelLoadError names what is wrong (the extra, the model). In fp16 when `half` (by default on a
    GPU; the CPU tests run that path too)."""
    try:
        from transformers import AutoConfig, AutoTokenizer, ClapFeatureExtractor, ClapModel
    except ImportError as error:
        raise ModelLoadError(EXTRA_HINT, "audio_model") from error
    offline = model_name == OFFLINE_AUDIO_MODEL
    source = str(OFFLINE_DIR) if offline else model_name
    torch_device = resolve_device(device)
    try:
        architecture = AutoConfig.from_pretrained(source)
        if architecture.model_type != "clap":
            raise ModelLoadError(f"{model_name!r} is a {architecture.model_type} model; give a CLAP model, such as "
                                 "laion/clap-htsat-unfused or laion/larger_clap_general", "audio_model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model: Any = ClapModel(architecture) if offline else ClapModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)  # type: ignore[no-untyped-call]
        features = ClapFeatureExtractor.from_pretrained(source)
    except ModelLoadError:
        raise
    except Exception as error:  # transformers raises many kinds (OSError, ValueError, HTTP errors)
        raise ModelLoadError(f"cannot load the audio model {model_name!r}: {error}", "audio_model") from error
    model = model.to(torch_device)
    if torch_device.type == "cuda" if half is None else half:
        model = model.half()
    model.eval()
    # RoBERTa numbers positions from the padding id + 1: two positions fewer than it holds.
    max_tokens = min(int(architecture.text_config.max_position_embeddings) - 2,
                     int(getattr(tokenizer, "model_max_length", 77)))
    log.info("loaded the audio model %s on %s", describe(model_name), torch_device)
    return AudioEncoder(model, features, tokenizer, ModelRef(model_name), torch_device, max_tokens)

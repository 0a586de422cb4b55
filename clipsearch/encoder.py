"""The dual-tower encoder: one factory, one vector contract.

Every encode method returns a float32 array of shape (n, d) whose rows have unit L2 norm, so an
inner product between any two of them is their cosine similarity.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from clipsearch.errors import ModelLoadError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
OFFLINE_MODEL = "tiny"
"""A tiny architecture shipped in model_configs/: random weights, no download, for tests and demos."""
RANDOM_WEIGHTS_SEED = 0

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """Which weights produced a set of embeddings: what a bundle records and a server checks.

    Exactly one of `pretrained` (an open_clip tag) and `checkpoint_sha256` (a local file's hash)
    is set, or neither for random weights (seeded with RANDOM_WEIGHTS_SEED).
    """

    name: str
    pretrained: str | None = None
    checkpoint_sha256: str | None = None

    def describe(self) -> str:
        if self.pretrained:
            return f"{self.name} ({self.pretrained})"
        if self.checkpoint_sha256:
            return f"{self.name} (checkpoint sha256 {self.checkpoint_sha256[:12]}…)"
        return f"{self.name} (random weights, seed {RANDOM_WEIGHTS_SEED})"


def resolve_device(device: str | None) -> torch.device:
    """'cuda' when a GPU is usable and nothing else was asked for, else 'cpu'."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(f"device: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device: 'cuda' was asked for but no CUDA GPU is available")
    return resolved


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class ClipEncoder:
    """An open_clip model with its image preprocessing and tokenizer, ready for inference."""

    def __init__(self, model: Any, preprocess: Callable[[Image.Image], torch.Tensor], tokenizer: Any,
                 ref: ModelRef, device: torch.device) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.ref = ref
        self.device = device
        self.context_length: int = int(getattr(tokenizer, "context_length", 77))
        self._dtype = next(model.parameters()).dtype
        self.embedding_dim: int = int(self.encode_texts(["probe"]).shape[1])

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, tuple | list) else size)

    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Embed RGB images, or a batch already preprocessed to shape (n, 3, H, W).

        Returns float32 (n, d), unit-norm rows.
        """
        if isinstance(images, torch.Tensor):
            batch = images
        else:
            if not images:
                return np.zeros((0, self.embedding_dim), dtype=np.float32)
            batch = torch.stack([self.preprocess(image) for image in images])
        with torch.inference_mode():
            batch = batch.to(self.device, dtype=self._dtype, non_blocking=True)
            features = self.model.encode_image(batch)
            return _normalised_float32(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; those longer than the context are truncated. Returns float32 (n, d), unit-norm."""
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            return _normalised_float32(self.model.encode_text(tokens))

    def is_truncated(self, text: str) -> bool:
        """Whether `text` has more tokens than fit in the context (start and end tokens included)."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return False  # tokenizers without a plain encode() (HF ones) truncate silently
        return len(encode(text)) + 2 > self.context_length


def _normalised_float32(features: torch.Tensor) -> np.ndarray:
    # Normalise in float32: fp16 norms of 512-d vectors lose enough precision to matter for ties.
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(model_name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 checkpoint: Path | None = None, device: str | None = None) -> ClipEncoder:
    """Build an encoder from an open_clip model name plus a pretrained tag or a local checkpoint file.

    With neither (the `tiny` model, typically) the weights are random but seeded, so two loads
    give the same embeddings. The model runs on CUDA when available (in fp16), else on the CPU.
    """
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ModelLoadError(f"model: unknown model {model_name!r}; open_clip knows e.g. "
                             f"{', '.join(sorted(open_clip.list_models())[:5])}, … and {OFFLINE_MODEL!r}")
    if checkpoint is not None and pretrained:
        raise ModelLoadError("give either a pretrained tag or a checkpoint file, not both")
    torch_device = resolve_device(device)
    weights: str | None = pretrained or None
    ref = ModelRef(model_name, pretrained=weights)
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ModelLoadError(f"checkpoint: no file at {checkpoint}")
        weights = str(checkpoint)
        ref = ModelRef(model_name, checkpoint_sha256=file_sha256(checkpoint))
    try:
        # Seed a private copy of the RNG so random weights are reproducible without touching
        # the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=torch_device,
                precision="fp16" if torch_device.type == "cuda" else "fp32")
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as error:  # open_clip raises many kinds (RuntimeError, HTTP errors, KeyError)
        raise ModelLoadError(f"cannot load {ref.describe()}: {error}") from error
    model.eval()
    log.info("loaded %s on %s", ref.describe(), torch_device)
    return ClipEncoder(model, preprocess, tokenizer, ref, torch_device)

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
from torchvision.transforms import Compose, Normalize, ToTensor

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
        self.dtype: torch.dtype = next(model.parameters()).dtype  # fp16 on CUDA, fp32 on the CPU
        self.prepare_image = ImagePreparer(preprocess)
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        if self.prepare_image.normalisation is not None:
            self._mean, self._std = (torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)
                                     for values in self.prepare_image.normalisation)
        self._image_forward: Callable[[torch.Tensor], torch.Tensor] = model.encode_image
        self._text_forward: Callable[[torch.Tensor], torch.Tensor] = model.encode_text
        self.embedding_dim: int = int(self.encode_texts(["probe"]).shape[1])
        self.cuda_graphs = False

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, tuple | list) else size)

    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Embed RGB images, or a batch from prepare_image stacked to shape (n, 3, H, W).

        Returns float32 (n, d), unit-norm rows.
        """
        if isinstance(images, torch.Tensor):
            batch = images
        else:
            if not images:
                return np.zeros((0, self.embedding_dim), dtype=np.float32)
            batch = torch.stack([self.prepare_image(image) for image in images])
        with torch.inference_mode():
            batch = batch.to(self.device, non_blocking=True)
            if batch.dtype == torch.uint8:
                if self._mean is None or self._std is None:
                    raise ValueError("uint8 pixels given to a model whose preprocessing cannot be split")
                # The same operations, in the same order and precision, as torchvision's ToTensor + Normalize.
                batch = batch.to(torch.float32).div_(255).sub_(self._mean).div_(self._std)
            return _normalised_float32(self._image_forward(batch.to(self.dtype)))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; those longer than the context are truncated. Returns float32 (n, d), unit-norm."""
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts))
        with torch.inference_mode():
            return _normalised_float32(self._text_forward(tokens.to(self.device)))

    def enable_cuda_graphs(self, max_batch: int) -> bool:
        """Replay both towers from CUDA graphs for batches up to `max_batch`; True if that worked.

        One eager forward pass of a small batch costs milliseconds of kernel launches on the CPU;
        a graph replays the same kernels in a fraction of that. Any failure to capture leaves the
        eager path in place (and is logged): slower, never wrong. Each tower's graphs must then be
        replayed from one thread at a time (the search service's batchers do that).
        """
        if self.device.type != "cuda" or self.cuda_graphs:
            return self.cuda_graphs
        try:
            with torch.inference_mode():
                size = self.image_size
                example_image = torch.zeros((1, 3, size, size), dtype=self.dtype, device=self.device)
                example_tokens = self.tokenizer(["a photo"]).to(self.device)
                image_graphs = GraphedForward(self.model.encode_image, example_image, max_batch)
                text_graphs = GraphedForward(self.model.encode_text, example_tokens, max_batch)
        except Exception:  # capture is best effort: eager inference must keep working whatever failed
            log.warning("CUDA graph capture failed; the model runs eagerly", exc_info=True)
            return False
        self._image_forward, self._text_forward = image_graphs, text_graphs
        self.cuda_graphs = True
        log.info("CUDA graphs captured for batches of up to %d", max_batch)
        return True

    def is_truncated(self, text: str) -> bool:
        """Whether `text` has more tokens than fit in the context (start and end tokens included)."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return False  # tokenizers without a plain encode() (HF ones) truncate silently
        return len(encode(text)) + 2 > self.context_length


class ImagePreparer:
    """The CPU half of image preprocessing: resized and cropped uint8 pixels, shape (3, H, W).

    Scaling to [0, 1] and normalising happen on the model's device in ClipEncoder.encode_images,
    so a quarter of the bytes travel between processes and to the GPU, with the same result as
    the model's own preprocessing. Models whose preprocessing cannot be split that way get their
    full preprocessing here (float32). Picklable without the model, for DataLoader workers.
    """

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.preprocess = preprocess
        self.pixel_steps, self.normalisation = _split_preprocess(preprocess)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.pixel_steps is None:
            return self.preprocess(image)
        pixels = np.array(self.pixel_steps(image), dtype=np.uint8)  # a writable copy, as torch wants
        return torch.from_numpy(pixels).permute(2, 0, 1)


class GraphedForward:
    """A forward pass replayed from CUDA graphs captured at power-of-two batch sizes up to `max_batch`.

    A batch is copied into the smallest captured size that holds it; the rows past it keep
    whatever an earlier batch left there (every row is computed independently, so they cannot
    affect the real ones). Larger batches run eagerly. Not thread-safe: one caller at a time.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                 max_batch: int) -> None:
        self.forward = forward
        self.sizes = [1 << power for power in range(max(1, max_batch - 1).bit_length() + 1)]
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        # One memory pool for all sizes: safe because the graphs never run concurrently and none
        # reads another's output, whatever order they are replayed in (pytorch/pytorch#166975).
        pool = torch.cuda.graph_pool_handle()
        # Largest first, so the smaller graphs fit in the memory the largest one reserved.
        for size in reversed(self.sizes):
            static_input = example[:1].expand(size, *example.shape[1:]).clone()
            warmup = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            warmup.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(warmup):
                for _ in range(2):  # lets lazy initialisation (cuBLAS handles, autotuning) happen outside capture
                    forward(static_input)
            torch.cuda.current_stream().wait_stream(warmup)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                static_output = forward(static_input)
            self._graphs[size] = (graph, static_input, static_output)
        replayed, eager = self(example[:1]).float(), forward(example[:1]).float()
        if not torch.allclose(replayed, eager, atol=1e-2, rtol=1e-2):
            raise RuntimeError(f"a replayed graph differs from eager by {(replayed - eager).abs().max():.3g}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        count = len(batch)
        size = next((size for size in self.sizes if size >= count), None)
        if size is None:
            return self.forward(batch)
        graph, static_input, static_output = self._graphs[size]
        static_input[:count].copy_(batch)
        graph.replay()
        return static_output[:count]


def _split_preprocess(preprocess: Callable[[Image.Image], torch.Tensor]
                      ) -> tuple[Callable[[Image.Image], Image.Image] | None,
                                 tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """Split open_clip's Compose(PIL steps…, ToTensor, Normalize) into the PIL steps and (mean, std)."""
    steps = list(getattr(preprocess, "transforms", []))
    cut = next((number for number, step in enumerate(steps) if isinstance(step, ToTensor)), None)
    if cut is None or len(steps) != cut + 2 or not isinstance(steps[-1], Normalize):
        return None, None
    normalise = steps[-1]
    return Compose(steps[:cut]), (tuple(normalise.mean), tuple(normalise.std))


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

"""The dual-tower encoder: one factory, one vector contract.

Every encode method returns a float32 array of shape (n, d) whose rows have unit L2 norm, so an
inner product between any two of them is their cosine similarity.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from clipsearch.config import ModelRef
from clipsearch.errors import ModelLoadError
from clipsearch.model.graphs import GraphedForward
from clipsearch.model.preprocess import ImagePreparer, PreprocessConfig
from clipsearch.model.text_trim import text_trimmer
from clipsearch.util.progress import progress_bar

TEXT_GRAPH_LENGTHS = (16, 32)
"""Token lengths, besides the full context, at which trimmed text towers are captured as CUDA graphs:
a batch runs at the smallest one that holds its longest text."""

CONFIG_DIR = Path(__file__).parent / "model_configs"
"""The offline models' open_clip configs, and under hf/ the Hugging Face files of their text towers."""


def _register_offline_models() -> None:
    """Teach open_clip the offline models (tiny, tiny-coca, tiny-multilingual), wherever the encoder is
    imported, so every open_clip call knows them.

    A config names its Hugging Face text tower by a path under CONFIG_DIR ("hf/…"); open_clip hands
    that name to transformers, which loads a local directory only by its full path, so the path is
    completed here, once the package's location is known.
    """
    open_clip.add_model_config(CONFIG_DIR)
    for path in CONFIG_DIR.glob("*.json"):
        # open_clip keeps its registry private; get_model_config returns copies, so the entry is set here.
        text_config = open_clip.factory._MODEL_CONFIGS[path.stem].get("text_cfg", {})
        for key in ("hf_model_name", "hf_tokenizer_name"):
            if str(text_config.get(key, "")).startswith("hf/"):
                text_config[key] = str(CONFIG_DIR / text_config[key])


_register_offline_models()

log = logging.getLogger(__name__)

Tower = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(device: str | None) -> torch.device:
    """'cuda' when a GPU is usable and nothing else was asked for, else 'cpu'."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(str(error), "device") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("'cuda' was asked for but no CUDA GPU is available", "device")
    return resolved


def weights_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype that most of `module`'s weights are in: the one its inputs must be cast to.

    Not the first parameter's: open_clip's fp16 (`precision="fp16"`, what the factory asks for on a
    GPU) converts convolutions, linear layers and projections and leaves embeddings and LayerNorms in
    fp32, and which parameter comes first differs from model to model."""
    elements: dict[torch.dtype, int] = {}
    for parameter in module.parameters():
        if parameter.is_floating_point():
            elements[parameter.dtype] = elements.get(parameter.dtype, 0) + parameter.numel()
    return max(elements, key=elements.__getitem__) if elements else torch.float32


class ClipEncoder:
    """An open_clip model with its image preparation and tokenizer, ready for inference."""

    def __init__(self, model: Any, tokenizer: Any, ref: ModelRef, device: torch.device, text_trim: bool = True,
                 preprocess_config: PreprocessConfig | None = None,
                 reload: Callable[[], Any] | None = None) -> None:
        self._model: Any = model
        self._reload = reload
        """Builds the same model again (the factory's), for `model` after `release_model`."""
        self._reload_lock = threading.Lock()
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        """A Hugging Face fast tokenizer (the multilingual models') changes its own settings on each
        call and refuses a second caller meanwhile ("Already borrowed"): one thread tokenizes at a time."""
        self.ref = ref
        self.device = device
        self.context_length: int = int(getattr(tokenizer, "context_length", 77))
        # Pixels go in at the image tower's dtype (fp16 on CUDA, fp32 on the CPU); texts go in as token ids.
        # The whole model's majority would not do: a small model's fp32 token embedding outweighs the rest.
        self.dtype = weights_dtype(getattr(model, "visual", model))
        self.weight_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
        """The model's weights, as loaded: about what it holds in memory whichever runtime runs its towers."""
        # Read once, so that scoring labels never needs the model itself (clipsearch.model.zero_shot).
        self.logit_scale, self.logit_bias = (_scalar(getattr(model, name, None)) for name in ("logit_scale",
                                                                                             "logit_bias"))
        self.preprocess_config = preprocess_config or PreprocessConfig.of_model(model)
        self.prepare_image = ImagePreparer(self.preprocess_config)
        self._mean, self._std = (torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)
                                 for values in (self.preprocess_config.mean, self.preprocess_config.std))
        # The text tower runs on each batch's real length wherever that is exact (clipsearch.model.text_trim).
        self.text_trim = text_trimmer(model) if text_trim else None
        self._image_forward: Tower = model.encode_image
        self._text_forward: Tower = self.text_trim or model.encode_text
        self._text_graphs: dict[int, Tower] = {}
        self.backend = "torch"
        """What runs the towers: 'torch', or 'onnx' / 'onnx-int8' after clipsearch.model.onnx_backend.use_onnx."""
        self.backend_cosine: float | None = None
        """The ONNX towers' lowest cosine to PyTorch over their self-check's probes (None on PyTorch)."""
        self.backend_startup_ms: dict[str, float] | None = None
        """What 'auto' measured at load for each runtime it chose between (one query plus one image)."""
        self.threads = torch.get_num_threads()
        """Intra-op threads of a forward pass (torch's, and ONNX Runtime's sessions')."""
        self.embedding_dim: int = int(self.encode_texts(["probe"]).shape[1])
        self.cuda_graphs = False

    @property
    def model(self) -> Any:
        """The PyTorch model; built again (as loaded) on first use after `release_model`."""
        if self._model is None:
            with self._reload_lock:
                if self._model is None:
                    if self._reload is None:
                        raise ModelLoadError("the PyTorch model was released and this encoder cannot build it "
                                             "again", "model")
                    log.info("building the PyTorch model of %s again (released when %s took its towers)",
                             self.ref.describe(), self.backend)
                    model = self._reload()
                    model.eval()
                    if self.text_trim is not None:
                        self.text_trim.model = model
                    self._model = model
        return self._model

    @property
    def holds_torch_weights(self) -> bool:
        """Whether the PyTorch model is in memory (False after `release_model`, until `model` is used)."""
        return self._model is not None

    def release_model(self) -> bool:
        """Free the PyTorch model where other code runs both towers (ONNX Runtime, whose sessions
        hold their own copy of the weights): the weights are then in memory once. Whether it was
        freed. Whatever needs the model later (explain's heatmaps) builds it again through `model`.
        """
        if self.backend == "torch" or self.cuda_graphs or self._reload is None:
            return False
        with self._reload_lock:
            if self._model is None:
                return False
            self._model = None
            if self.text_trim is not None:
                # Only its real_length serves the towers that run now; its hold on the model must go.
                self.text_trim.model = None
        _return_freed_memory()
        log.info("freed the PyTorch copy of %s's weights: %s runs its towers", self.ref.describe(), self.backend)
        return True

    @property
    def towers(self) -> tuple[Tower, Tower]:
        """The image and text forward passes in use: prepared pixels → features, tokens → features."""
        return self._image_forward, self._text_forward

    def set_towers(self, image: Tower, text: Tower, backend: str) -> None:
        """Run the towers through other implementations of the same functions (ONNX Runtime's).

        The text forward receives tokens cut to the batch's real length wherever trimming is exact.
        """
        if self.cuda_graphs:
            raise ModelLoadError("the towers cannot be replaced once CUDA graphs are captured", "backend")
        self._image_forward, self._text_forward, self.backend = image, text, backend

    @property
    def image_size(self) -> int:
        """The model input's longer side: what JPEG draft decoding must keep."""
        return max(self.preprocess_config.size)

    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Embed RGB images, or a uint8 batch from prepare_image stacked to shape (n, 3, H, W).

        Returns float32 (n, d), unit-norm rows.
        """
        if isinstance(images, torch.Tensor):
            batch = images
        else:
            if not images:
                return np.zeros((0, self.embedding_dim), dtype=np.float32)
            batch = torch.stack([self.prepare_image(image) for image in images])
        with torch.inference_mode():
            return _normalised_float32(self._image_forward(self.model_input(batch)))

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A uint8 batch from prepare_image (or float pixels in [0, 255]), scaled and normalised on the device."""
        # The same operations, in the same order and precision, as torchvision's ToTensor + Normalize.
        pixels = batch.to(self.device, non_blocking=True).to(torch.float32).div_(255)
        return pixels.sub_(self._mean).div_(self._std).to(self.dtype)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; those longer than the context are truncated. Returns float32 (n, d), unit-norm."""
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        tokens = self.tokenize(texts)
        forward = self._text_forward
        if self.text_trim is not None:
            length = self.text_trim.real_length(tokens)  # on the CPU tokens: no device round trip
            if self._text_graphs:
                length = min(captured for captured in self._text_graphs if captured >= length)
                forward = self._text_graphs[length]
            tokens = tokens[:, :length]
        elif self._text_graphs:
            forward = self._text_graphs[tokens.shape[1]]
        with torch.inference_mode():
            return _normalised_float32(forward(tokens.to(self.device)))

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """The text tower's raw features for `texts` (not normalised), with gradients where enabled:
        what training uses. Trimmed to the batch's real length wherever that is exact."""
        tokens = self.tokenize(texts)
        if self.text_trim is not None:
            return self.text_trim(tokens[:, :self.text_trim.real_length(tokens)].to(self.device))
        return self.model.encode_text(tokens.to(self.device))  # type: ignore[no-any-return]

    def encode_texts_in_batches(self, texts: Sequence[str], batch_size: int, progress: bool = False,
                                unit: str = "text") -> np.ndarray:
        """encode_texts over many texts, `batch_size` at a time (a progress bar with `progress`)."""
        vectors = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        with progress_bar(total=len(texts), unit=unit, desc=f"encoding {unit}s", disable=not progress,
                          dynamic_ncols=True) as bar:
            for start in range(0, len(texts), batch_size):
                vectors[start:start + batch_size] = self.encode_texts(texts[start:start + batch_size])
                bar.update(min(batch_size, len(texts) - start))
        return vectors

    def enable_cuda_graphs(self, max_batch: int) -> bool:
        """Replay both towers from CUDA graphs for batches up to `max_batch`; True if that worked.

        Any failure to capture leaves the eager path in place (and is logged): slower, never wrong.
        Each tower's graphs must then be replayed from one thread at a time (the search service's
        batchers do that).
        """
        if self.device.type != "cuda" or self.cuda_graphs or self.backend != "torch":
            return self.cuda_graphs
        try:
            with torch.inference_mode():
                height, width = self.preprocess_config.size
                example_image = torch.zeros((1, 3, height, width), dtype=self.dtype, device=self.device)
                example_tokens = self.tokenize(["a photo"]).to(self.device)
                image_graphs = GraphedForward(self.model.encode_image, example_image, max_batch)
                context = example_tokens.shape[1]
                lengths = sorted({*(length for length in TEXT_GRAPH_LENGTHS if length < context), context}) \
                    if self.text_trim is not None else [context]
                text_graphs: dict[int, Tower] = {
                    length: GraphedForward(self._text_forward, example_tokens[:, :length], max_batch)
                    for length in lengths}
        except Exception:  # capture is best effort: eager inference must keep working whatever failed
            log.warning("CUDA graph capture failed; the model runs eagerly", exc_info=True)
            return False
        self._image_forward, self._text_graphs = image_graphs, text_graphs
        self.cuda_graphs = True
        log.info("CUDA graphs captured for batches of up to %d", max_batch)
        return True

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """The tokens of `texts`, (n, context) int64; safe to call from several threads."""
        with self._tokenizer_lock:
            tokens: torch.Tensor = self.tokenizer(list(texts))
        return tokens

    def is_truncated(self, text: str) -> bool:
        """Whether `text` has more tokens than fit in the context (start and end tokens included)."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:  # open_clip's own tokenizers: the text's tokens, without start and end
            with self._tokenizer_lock:
                return len(encode(text)) + 2 > self.context_length
        # open_clip's HFTokenizer and Chinese-CLIP's wrap a transformers tokenizer, which counts its
        # special tokens itself.
        wrapped = getattr(self.tokenizer, "tokenizer", None)
        if callable(wrapped):
            with self._tokenizer_lock:
                return len(wrapped(text)["input_ids"]) > self.context_length
        return False


def _scalar(parameter: Any) -> float | None:
    return None if parameter is None else float(parameter.detach().float())


def _return_freed_memory() -> None:
    """Hand freed heap memory back to the system: glibc keeps the pages of freed blocks below its
    (adaptive) mmap threshold, so a freed model would otherwise still count in the RSS."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator decides for itself
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _normalised_float32(features: torch.Tensor) -> np.ndarray:
    # Normalise in float32: fp16 norms of 512-d vectors lose enough precision to matter for ties.
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)

"""Caption generation with open_clip's CoCa models, for images that have no caption.

CoCa's `generate` needs Hugging Face transformers (its logits processors and beam search), which
the `[caption]` extra installs; without it, loading a captioner fails with a message that names
the extra. The caption model is separate from the search model and loads only when asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
from PIL import Image

from clipsearch.config import RANDOM_WEIGHTS_SEED, CaptionConfig, ModelRef
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import resolve_device, weights_dtype
from clipsearch.model.lazy import LazyBatchedModel
from clipsearch.model.preprocess import ImagePreparer, PreprocessConfig
from clipsearch.util.files import file_sha256

OFFLINE_CAPTION_MODEL = "tiny-coca"
"""A tiny CoCa shipped in model_configs/: random weights (so random words), for tests."""

_START, _END = "<start_of_text>", "<end_of_text>"

log = logging.getLogger(__name__)


def transformers_available() -> bool:
    from open_clip import coca_model  # open_clip decides itself whether its transformers import worked

    return bool(getattr(coca_model, "_has_transformers", False))


class Captioner:
    """A CoCa model with its own image preparation; `caption` turns prepared images into strings.

    Not thread-safe by itself: the server runs it from one batcher thread.
    """

    def __init__(self, model: Any, ref: ModelRef, device: torch.device, config: CaptionConfig) -> None:
        self.model, self.ref, self.device, self.config = model, ref, device, config
        self.preprocess_config = PreprocessConfig.of_model(model)
        self.prepare_image = ImagePreparer(self.preprocess_config)
        self.dtype = weights_dtype(model.visual)  # the image tower's, which the pixels enter
        self._mean, self._std = (torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)
                                 for values in (self.preprocess_config.mean, self.preprocess_config.std))

    @property
    def image_size(self) -> int:
        return max(self.preprocess_config.size)

    def caption_images(self, images: Sequence[Image.Image]) -> list[str]:
        if not images:
            return []
        return self.caption(torch.stack([self.prepare_image(image) for image in images]))

    @torch.inference_mode()
    def caption(self, pixels: torch.Tensor) -> list[str]:
        """Captions for a uint8 batch (n, 3, H, W) from `prepare_image`, in order."""
        if len(pixels) == 0:
            return []
        batch = pixels.to(self.device).to(torch.float32).div_(255).sub_(self._mean).div_(self._std).to(self.dtype)
        tokens = self.model.generate(batch, generation_type=self.config.generation, seq_len=self.config.max_tokens)
        return [decode_caption(row) for row in tokens.cpu()]

    def caption_stacked(self, pixels: Sequence[torch.Tensor]) -> list[str]:
        """`caption` for a list of single prepared images (a batcher's batch)."""
        return self.caption(torch.stack(list(pixels)))


def decode_caption(tokens: torch.Tensor) -> str:
    """The text between the start token and the first end token (padding and all after it dropped)."""
    text = open_clip.decode(tokens)
    text = text.split(_END, 1)[0].replace(_START, "")
    return " ".join(text.split())


def _initialise_decoder_projection(model: Any) -> None:
    """Give random-weight CoCa models a seeded text-decoder projection.

    open_clip allocates it with torch.empty and leaves it to pretrained weights to fill, so without
    them it holds whatever memory it got: captions would differ run to run, or come out NaN.
    """
    projection = getattr(getattr(model, "text_decoder", None), "text_projection", None)
    if isinstance(projection, torch.nn.Parameter):
        with torch.no_grad():
            torch.nn.init.normal_(projection, std=projection.shape[0] ** -0.5)


def load_captioner(config: CaptionConfig, half: bool | None = None) -> Captioner:
    """Load the caption model; ModelLoadError names what is wrong (the extra, the model, the file).

    In fp16 when `half` (by default: on a GPU). Every weight is halved ("pure_fp16"): open_clip's
    mixed "fp16" leaves the attentional pooler's query in fp32, which CoCa's image tower then
    multiplies with fp16 weights and fails."""
    config.check()
    if not transformers_available():
        raise ModelLoadError("caption generation needs Hugging Face transformers: install the [caption] extra "
                             "(pip install 'clipsearch[caption]')", "caption_model")
    if config.model not in open_clip.list_models() or not config.model.startswith(("coca", "tiny-coca")):
        coca = sorted(name for name in open_clip.list_models() if name.startswith(("coca", "tiny-coca")))
        raise ModelLoadError(f"{config.model!r} is not a CoCa model; choose one of {', '.join(coca)}",
                             "caption_model")
    if config.checkpoint is not None and config.pretrained:
        raise ModelLoadError("give either a pretrained tag or a checkpoint file, not both", "caption_checkpoint")
    device = resolve_device(config.device)
    weights: str | None = config.pretrained or None
    ref = ModelRef(config.model, pretrained=weights)
    if config.checkpoint is not None:
        if not config.checkpoint.is_file():
            raise ModelLoadError(f"no file at {config.checkpoint}", "caption_checkpoint")
        weights = str(config.checkpoint)
        ref = ModelRef(config.model, checkpoint_sha256=file_sha256(config.checkpoint))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            halved = device.type == "cuda" if half is None else half
            model = open_clip.create_model(config.model, pretrained=weights, device=device,
                                           precision="pure_fp16" if halved else "fp32")
            if weights is None:
                _initialise_decoder_projection(model)
    except Exception as error:  # open_clip raises many kinds (RuntimeError, HTTP errors, KeyError)
        raise ModelLoadError(f"cannot load {ref.describe()}: {error}", "caption_model") from error
    model.eval()
    log.info("loaded caption model %s on %s", ref.describe(), device)
    return Captioner(model, ref, device, config)


class CaptionService(LazyBatchedModel[Captioner, torch.Tensor, str]):
    """Captions for the server: the model loads on the first request and runs in its own batcher
    (clipsearch.model.lazy)."""

    def __init__(self, config: CaptionConfig, max_batch: int = 8, timeout_s: float = 120.0) -> None:
        super().__init__(lambda: load_captioner(config), lambda captioner: captioner.caption_stacked,
                         what=f"the caption model {config.model}", task="captioning", name="caption",
                         max_batch=max_batch, timeout_s=timeout_s)
        self.config = config

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return self.run([self.model().prepare_image(image) for image in images])

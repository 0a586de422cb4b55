"""Image preprocessing built from the model's own preprocessing configuration.

open_clip records how a model was trained to see images (`open_clip.get_model_preprocess_cfg`:
size, mean, std, interpolation, resize mode). The CPU half, resize and crop to uint8 pixels, is
done here; scaling to [0, 1] and normalising with (mean, std) happen on the model's device in
ClipEncoder.encode_images, so a quarter of the bytes travel between processes and to the GPU.
The result is bit-identical to open_clip's own preprocessing (a test checks it).

Memory is bounded by the input, not its shape: the usual "resize the short side, then crop the
centre" would turn a 1×65000 image into a 224×14,560,000 intermediate (about 10 GB). Where the
resized image would exceed MAX_INTERMEDIATE_FACTOR times the model's input, only the part that
survives the crop is resampled (Pillow's `resize(box=…)`: the same filter at the same positions).
So preparing an image needs at most its decoded pixels plus MAX_INTERMEDIATE_FACTOR × the model
input (4 × 224 × 224 × 3 bytes ≈ 0.6 MB for ViT-B-32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
import torchvision.transforms.functional as F
from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
from PIL import Image
from torchvision.transforms import InterpolationMode

from clipsearch.errors import ModelLoadError

MAX_INTERMEDIATE_FACTOR = 4
"""Largest resized image, as a multiple of the model input's pixels, before the crop is resampled alone
(so aspect ratios up to 4:1 take open_clip's exact path unchanged)."""

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
_RESIZE_MODES = ("shortest", "longest", "squash")
_RESAMPLING = {2: "bilinear", 3: "bicubic"}
"""PIL's resampling codes, as a transformers preprocessor_config.json gives them, by the names used here."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model expects its images: read from open_clip, never from the transform objects."""

    size: tuple[int, int]
    """(height, width) of the model input."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def of_model(cls, model: Any) -> PreprocessConfig:
        config = open_clip.get_model_preprocess_cfg(model)
        size = config.get("size", 224)
        height, width = (size, size) if isinstance(size, int) else (int(size[-2]), int(size[-1]))
        mean = config.get("mean") or open_clip.OPENAI_DATASET_MEAN
        std = config.get("std") or open_clip.OPENAI_DATASET_STD
        interpolation = config.get("interpolation") or "bicubic"
        resize_mode = config.get("resize_mode") or "shortest"
        if interpolation not in _INTERPOLATIONS:
            interpolation = "bicubic"  # open_clip's own rule: 'random' (training only) means bicubic at inference
        if resize_mode not in _RESIZE_MODES:
            raise ModelLoadError(f"unknown resize mode {resize_mode!r} in the model's preprocessing configuration")
        return cls(size=(height, width), mean=_three(mean), std=_three(std), interpolation=interpolation,
                   resize_mode=resize_mode, fill_color=int(config.get("fill_color", 0)))

    @classmethod
    def of_hf_processor(cls, processor: Any) -> PreprocessConfig:
        """The equivalent of a transformers image processor's settings (CLIP-style: Chinese-CLIP's, BLIP's)."""
        size, mean, std = dict(processor.size), _three(processor.image_mean), _three(processor.image_std)
        interpolation = _RESAMPLING.get(int(processor.resample), "bicubic")
        crops = bool(getattr(processor, "do_center_crop", False))  # BLIP's processor never crops
        if "shortest_edge" in size:  # resize the short side, then crop the centre (open_clip's way)
            crop = dict(processor.crop_size) if crops else {"height": size["shortest_edge"],
                                                            "width": size["shortest_edge"]}
            return cls((int(crop["height"]), int(crop["width"])), mean, std, interpolation=interpolation,
                       resize_mode="shortest")
        if crops:
            raise ModelLoadError(f"an image processor that resizes to {size} and then crops is not supported", "model")
        return cls((int(size["height"]), int(size["width"])), mean, std, interpolation=interpolation,
                   resize_mode="squash")


class ImagePreparer:
    """The CPU half of preprocessing: an RGB image → resized and cropped uint8 pixels, shape (3, H, W).

    Picklable without the model, for DataLoader workers.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.array(self.resize_and_crop(image), dtype=np.uint8)  # a writable copy, as torch wants
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        config = self.config
        height, width = config.size
        interpolation = _INTERPOLATIONS[config.interpolation]
        if config.resize_mode == "squash":
            return _image(F.resize(image, [height, width], interpolation))
        if config.resize_mode == "longest":  # fits inside the input, then pads: never larger than it
            fitted = ResizeKeepRatio(config.size, interpolation=interpolation, longest=1)(image)
            return _image(CenterCropOrPad(config.size, fill=config.fill_color)(fitted))
        resized_height, resized_width = self._shortest_side_size(image)
        if height != width:
            interpolation = InterpolationMode.BICUBIC  # open_clip's ResizeKeepRatio, whatever the configuration says
        if resized_height * resized_width <= MAX_INTERMEDIATE_FACTOR * height * width:
            resized = F.resize(image, [resized_height, resized_width], interpolation)
            return _image(F.center_crop(resized, [height, width]))
        # Resample only the region the centre crop keeps, with the scale of the full resize.
        top = round((resized_height - height) / 2.0)  # torchvision's center_crop offsets
        left = round((resized_width - width) / 2.0)
        scale_y, scale_x = image.height / resized_height, image.width / resized_width
        box = (left * scale_x, top * scale_y, (left + width) * scale_x, (top + height) * scale_y)
        return image.resize((width, height), _pil_filter(interpolation), box=box)

    def _shortest_side_size(self, image: Image.Image) -> tuple[int, int]:
        """The (height, width) open_clip resizes to in 'shortest' mode, before its centre crop."""
        height, width = self.config.size
        if height == width:  # torchvision's Resize(int): the short side to `height`, the long side truncated
            short, long = sorted((image.width, image.height))
            new_long = int(height * long / short)
            return (new_long, height) if image.width <= image.height else (height, new_long)
        # open_clip's ResizeKeepRatio for non-square inputs: both sides rounded
        ratio = min(image.height / height, image.width / width)
        return round(image.height / ratio), round(image.width / ratio)


def _image(result: Any) -> Image.Image:
    """torchvision's functional ops are typed for tensors and images alike; given an image, they return one."""
    assert isinstance(result, Image.Image)
    return result


def _pil_filter(interpolation: InterpolationMode) -> Image.Resampling:
    return Image.Resampling.BILINEAR if interpolation is InterpolationMode.BILINEAR else Image.Resampling.BICUBIC


def _three(values: Any) -> tuple[float, float, float]:
    numbers = [float(value) for value in (values if isinstance(values, list | tuple) else [values])]
    if len(numbers) == 1:
        numbers *= 3
    return numbers[0], numbers[1], numbers[2]

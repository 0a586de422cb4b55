"""Preprocessing read from the model's configuration equals open_clip's own, with memory bounded by the input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipsearch.config import OFFLINE_MODEL
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.preprocess import MAX_INTERMEDIATE_FACTOR, ImagePreparer, PreprocessConfig

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(200, 150), (150, 200), (64, 64), (63, 65), (256, 64), (64, 256), (1, 1), (640, 480)]
"""(width, height): landscape, portrait, exact, off by one, 4:1 both ways (the exact path's edge), tiny, a photo."""


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def normalised(pixels: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """What the encoder does on the device, on the CPU: the same operations in the same order."""
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (config.mean, config.std))
    return pixels.to(torch.float32).div(255).sub(mean).div(std)


def test_the_configuration_is_read_from_open_clip(encoder: ClipEncoder) -> None:
    assert encoder.preprocess_config == PreprocessConfig(
        size=(64, 64), mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_prepared_pixels_equal_open_clips_own_preprocessing_exactly(encoder: ClipEncoder, width: int,
                                                                   height: int) -> None:
    _, _, preprocess = open_clip.create_model_and_transforms(OFFLINE_MODEL, pretrained=None)
    image = random_image(width, height)
    pixels = encoder.prepare_image(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 64)
    torch.testing.assert_close(normalised(pixels, encoder.preprocess_config), preprocess(image), rtol=0, atol=0)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize(("width", "height"), [(300, 200), (120, 240)])
def test_every_resize_mode_and_a_rectangular_input_follow_open_clip(resize_mode: str, width: int, height: int) -> None:
    config = PreprocessConfig(size=(48, 80), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                              interpolation="bilinear", resize_mode=resize_mode, fill_color=7)
    reference = open_clip.image_transform(config.size, is_train=False, mean=config.mean, std=config.std,
                                          resize_mode=resize_mode, interpolation="bilinear", fill_color=7)
    image = random_image(width, height, seed=3)
    pixels = ImagePreparer(config)(image)
    assert pixels.shape == (3, 48, 80)
    torch.testing.assert_close(normalised(pixels, config), reference(image), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("width", "height"), [(5, 900), (900, 5), (3, 4000), (64, 257)])
def test_thin_images_past_the_bound_resample_only_the_crop_and_stay_within_a_few_levels(
        encoder: ClipEncoder, width: int, height: int) -> None:
    _, _, preprocess = open_clip.create_model_and_transforms(OFFLINE_MODEL, pretrained=None)
    image = random_image(width, height, seed=5)
    assert max(width, height) / min(width, height) > MAX_INTERMEDIATE_FACTOR
    difference = (normalised(encoder.prepare_image(image), encoder.preprocess_config) - preprocess(image)).abs()
    level = 1 / (255 * min(encoder.preprocess_config.std))  # one uint8 step, after normalising
    # Pillow rounds a resampled region a little differently from the same region of a full
    # resample: measured on these shapes, well under a level on average and a few levels at most.
    assert float(difference.mean()) < 1.0 * level
    assert float(difference.max()) < 32 * level


def test_a_1x65000_image_is_prepared_without_a_huge_intermediate() -> None:
    # 339 bytes of PNG; resized the usual way for a 224-pixel model it would be 224×14,560,000 RGB
    # (about 9.8 GB). A fresh process, so its peak memory is this image's alone.
    script = """
import io, resource, sys
from PIL import Image
from clipsearch.util.images import decode_image
from clipsearch.model.preprocess import ImagePreparer, PreprocessConfig
buffer = io.BytesIO()
Image.new("RGB", (1, 65000), (200, 30, 90)).save(buffer, "PNG")
preparer = ImagePreparer(PreprocessConfig(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = preparer(decode_image(buffer.getvalue()))
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(len(buffer.getvalue()), tuple(pixels.shape), round(grown_mb, 1))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True)
    png_bytes, shape, grown_mb = result.stdout.split(" ", 1)[0], *result.stdout.rsplit(" ", 1)
    print("1x65000 PNG:", result.stdout.strip())
    assert int(png_bytes) < 1000
    assert shape.endswith("(3, 224, 224)")
    assert float(grown_mb) < 64


def processor(**settings: object) -> SimpleNamespace:
    defaults: dict[str, object] = {"image_mean": [0.5] * 3, "image_std": [0.25] * 3, "resample": 3,
                                   "do_center_crop": False, "crop_size": {"height": 224, "width": 224}}
    return SimpleNamespace(**(defaults | settings))


def test_image_settings_map_to_a_square_resize_or_a_resize_and_crop() -> None:
    square = PreprocessConfig.of_hf_processor(processor(size={"height": 224, "width": 224}))
    assert (square.size, square.resize_mode, square.interpolation) == ((224, 224), "squash", "bicubic")
    cropped = PreprocessConfig.of_hf_processor(processor(size={"shortest_edge": 256}, do_center_crop=True, resample=2))
    assert (cropped.size, cropped.resize_mode, cropped.interpolation) == ((224, 224), "shortest", "bilinear")
    with pytest.raises(ModelLoadError, match="crops"):
        PreprocessConfig.of_hf_processor(processor(size={"height": 256, "width": 256}, do_center_crop=True))


def test_an_image_processor_without_a_crop_setting_resizes_to_its_square() -> None:
    blip_style = SimpleNamespace(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.25] * 3,
                                 resample=3)
    preparation = PreprocessConfig.of_hf_processor(blip_style)
    assert (preparation.size, preparation.resize_mode, preparation.std) == ((384, 384), "squash", (0.25,) * 3)

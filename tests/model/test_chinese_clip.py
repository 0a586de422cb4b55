"""Chinese-CLIP, a model family outside open_clip, keeps the encoder contract: the same vectors transformers gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsearch.config import default_pretrained
from clipsearch.errors import ModelLoadError
from clipsearch.model.chinese_clip import OFFLINE_DIR, ChineseClip
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder

transformers = pytest.importorskip("transformers", reason="the [multilingual] extra is not installed")

TEXTS = ["左边的红色圆形", "右上角的蓝色三角形", "a red circle on the left", "红色 car", ""]


@pytest.fixture(scope="module")
def chinese_clip() -> ClipEncoder:
    return load_encoder("tiny-chinese-clip", pretrained=None, device="cpu", backend="torch")


def unit(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True)).detach().numpy()


def test_the_offline_chinese_clip_loads_without_a_network_into_unit_float32_rows(chinese_clip: ClipEncoder) -> None:
    assert isinstance(chinese_clip.model, ChineseClip)
    assert chinese_clip.ref.describe() == "tiny-chinese-clip (random weights, seed 0)"
    texts = chinese_clip.encode_texts(TEXTS)
    images = chinese_clip.encode_images([Image.new("RGB", (90, 40), "red"), Image.new("RGB", (10, 70), "blue")])
    for vectors, rows in ((texts, len(TEXTS)), (images, 2)):
        assert vectors.dtype == np.float32 and vectors.shape == (rows, chinese_clip.embedding_dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_text_vectors_are_transformers_own_text_features(chinese_clip: ClipEncoder) -> None:
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(OFFLINE_DIR))
    batch = hf_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = chinese_clip.model.hf.get_text_features(input_ids=batch.input_ids,
                                                          attention_mask=batch.attention_mask)
    np.testing.assert_allclose(chinese_clip.encode_texts(TEXTS), unit(expected), atol=1e-5)


def test_image_vectors_are_transformers_own_image_features_after_its_own_preprocessing(
        chinese_clip: ClipEncoder) -> None:
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
              for height, width in ((64, 64), (120, 50), (33, 200))]
    processor = transformers.ChineseCLIPImageProcessor.from_pretrained(str(OFFLINE_DIR))
    with torch.no_grad():
        expected = chinese_clip.model.hf.get_image_features(
            pixel_values=processor(images, return_tensors="pt").pixel_values)
    # Resampled by the same Pillow filter; the two normalise in a different order (1e-3 of a unit vector).
    np.testing.assert_allclose(chinese_clip.encode_images(images), unit(expected), atol=2e-3)


def test_random_weights_are_the_same_on_every_load(chinese_clip: ClipEncoder) -> None:
    again = load_encoder("tiny-chinese-clip", pretrained=None, device="cpu", backend="torch")
    np.testing.assert_array_equal(again.encode_texts(TEXTS), chinese_clip.encode_texts(TEXTS))


def test_a_checkpoint_file_loads_and_is_identified_by_its_hash(chinese_clip: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tuned.pt"
    torch.save({"state_dict": {name: tensor * 0.5 for name, tensor in chinese_clip.model.state_dict().items()}},
               checkpoint)
    loaded = load_encoder("tiny-chinese-clip", pretrained=None, checkpoint=checkpoint, device="cpu", backend="torch")
    assert loaded.ref.checkpoint_sha256 is not None
    assert not np.allclose(loaded.encode_texts(TEXTS), chinese_clip.encode_texts(TEXTS))


def test_locking_a_tower_freezes_exactly_its_parameters(chinese_clip: ClipEncoder) -> None:
    model = load_encoder("tiny-chinese-clip", pretrained=None, device="cpu", backend="torch").model
    model.lock_image_tower()
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen and all(name.startswith(("hf.vision_model.", "hf.visual_projection.")) for name in frozen)
    model.lock_text_tower()
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == {"hf.logit_scale"}


def test_the_published_models_default_to_their_hugging_face_weights() -> None:
    assert default_pretrained("chinese-clip-vit-base-patch16") == "OFA-Sys/chinese-clip-vit-base-patch16"
    assert default_pretrained("tiny-chinese-clip") is None


def test_a_missing_repository_offline_is_a_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="chinese-clip-vit-base-patch16"):
        load_encoder("chinese-clip-vit-base-patch16", pretrained="OFA-Sys/chinese-clip-vit-base-patch16",
                     device="cpu")

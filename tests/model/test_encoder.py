from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from clipsearch.config import OFFLINE_MODEL
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from tests.support.imagefiles import noise_image


def assert_unit_float32(vectors: np.ndarray, rows: int, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (rows, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_image_embeddings_are_unit_float32_rows(encoder: ClipEncoder) -> None:
    vectors = encoder.encode_images([noise_image(seed) for seed in range(3)])
    assert_unit_float32(vectors, 3, encoder.embedding_dim)


def test_text_embeddings_are_unit_float32_rows(encoder: ClipEncoder) -> None:
    vectors = encoder.encode_texts(["a dog", "a cat on a mat"])
    assert_unit_float32(vectors, 2, encoder.embedding_dim)


def test_prepared_pixel_batches_embed_like_pil_images(encoder: ClipEncoder) -> None:
    images = [noise_image(seed) for seed in range(2)]
    batch = torch.stack([encoder.prepare_image(image) for image in images])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, encoder.image_size, encoder.image_size)
    np.testing.assert_array_equal(encoder.encode_images(batch), encoder.encode_images(images))


def test_cuda_graphs_are_not_used_on_the_cpu(encoder: ClipEncoder) -> None:
    assert not encoder.enable_cuda_graphs(8) and not encoder.cuda_graphs


def test_empty_input_gives_an_empty_matrix(encoder: ClipEncoder) -> None:
    assert encoder.encode_texts([]).shape == (0, encoder.embedding_dim)
    assert encoder.encode_images([]).shape == (0, encoder.embedding_dim)


@pytest.mark.parametrize("name", ["tiny-multilingual", "tiny-chinese-clip"])
def test_a_hugging_face_tokenizer_says_when_a_text_is_cut(name: str) -> None:
    multilingual = load_encoder(name, pretrained=None, device="cpu")
    assert not multilingual.is_truncated("左边的红色圆形")
    assert multilingual.is_truncated("左边的红色圆形" * 12)  # 84 characters, each a token
    assert multilingual.encode_texts(["左边的红色圆形" * 12]).shape == (1, multilingual.embedding_dim)


@pytest.mark.parametrize("name", ["tiny-multilingual", "tiny-chinese-clip"])
def test_a_hugging_face_tokenizer_serves_several_threads_at_once(name: str) -> None:
    # A fast tokenizer refuses a second caller while it runs ("Already borrowed"): requests' length
    # checks and the batcher's forward passes share it.
    multilingual = load_encoder(name, pretrained=None, device="cpu")
    texts = [f"第{number}个红色圆形 a red circle number {number}" * (number % 4 + 1) for number in range(64)]
    expected = multilingual.encode_texts(texts)

    def work(number: int) -> tuple[bool, np.ndarray]:
        return multilingual.is_truncated(texts[number]), multilingual.encode_texts([texts[number]])[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(work, range(len(texts))))
    np.testing.assert_allclose(np.stack([vector for _, vector in answers]), expected, atol=1e-5)
    assert [cut for cut, _ in answers] == [multilingual.is_truncated(text) for text in texts]


def test_text_longer_than_the_context_is_truncated_not_refused(encoder: ClipEncoder) -> None:
    long_text = "word " * 500
    assert encoder.is_truncated(long_text)
    assert not encoder.is_truncated("short")
    assert_unit_float32(encoder.encode_texts([long_text]), 1, encoder.embedding_dim)












def test_in_fp16_as_on_a_gpu_images_and_texts_embed_as_in_fp32_within_fp16_precision(encoder: ClipEncoder) -> None:
    """The GPU's half-precision path run on the CPU: open_clip's fp16 leaves the embeddings and LayerNorms
    in fp32, and the pixels must enter at the image tower's dtype all the same."""
    half = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", precision="fp16", backend="torch")
    assert half.dtype == torch.float16 and half.model.visual.conv1.weight.dtype == torch.float16
    assert half.model.token_embedding.weight.dtype == torch.float32  # larger than the rest of this tiny model
    images = [noise_image(seed) for seed in range(3)]
    in_half, in_full = half.encode_images(images), encoder.encode_images(images)
    assert_unit_float32(in_half, 3, half.embedding_dim)
    np.testing.assert_allclose(in_half, in_full, atol=1e-2)
    np.testing.assert_allclose(half.encode_texts(["a dog", "a cat"]), encoder.encode_texts(["a dog", "a cat"]),
                               atol=1e-2)


@pytest.mark.gpu
def test_on_gpu_the_encoder_runs_fp16_and_still_returns_unit_float32() -> None:
    gpu = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")
    assert gpu.dtype == torch.float16
    assert_unit_float32(gpu.encode_texts(["a", "b"]), 2, gpu.embedding_dim)
    assert_unit_float32(gpu.encode_images([noise_image(0)]), 1, gpu.embedding_dim)


@pytest.mark.gpu
def test_cuda_graph_replays_equal_eager_passes_for_every_batch_size() -> None:
    gpu = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")
    texts = [f"text number {number}" for number in range(100)]
    images = [noise_image(seed) for seed in range(100)]
    eager_texts, eager_images = gpu.encode_texts(texts), gpu.encode_images(images)
    assert gpu.enable_cuda_graphs(64) and gpu.cuda_graphs
    for count in (1, 3, 64, 100):  # a captured size, a padded one, the largest, and one run eagerly
        np.testing.assert_allclose(gpu.encode_texts(texts[:count]), eager_texts[:count], atol=2e-3)
        np.testing.assert_allclose(gpu.encode_images(images[:count]), eager_images[:count], atol=2e-3)
    # A smaller batch after a larger one is not disturbed by the rows the larger one left behind.
    np.testing.assert_allclose(gpu.encode_texts(texts[5:6]), eager_texts[5:6], atol=2e-3)


@pytest.mark.gpu
def test_gpu_embeddings_match_cpu_embeddings_within_fp16_precision(encoder: ClipEncoder) -> None:
    gpu = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")
    images = [noise_image(seed) for seed in range(4)]
    np.testing.assert_allclose(gpu.encode_images(images), encoder.encode_images(images), atol=1e-2)
    np.testing.assert_allclose(gpu.encode_texts(["a dog"]), encoder.encode_texts(["a dog"]), atol=1e-2)



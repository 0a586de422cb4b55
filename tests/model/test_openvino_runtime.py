"""OpenVINO compiles the ONNX export in f32, gives each thread its own request, and never hands out a reused buffer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.config import OFFLINE_MODEL
from clipsearch.model import onnx_backend
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.openvino_runtime import OpenVinoTowers, load_openvino_towers, openvino_available

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def towers(encoder: ClipEncoder, tmp_path_factory: pytest.TempPathFactory) -> OpenVinoTowers:
    export = onnx_backend._exported(encoder, "onnx", tmp_path_factory.mktemp("onnx"))
    assert export.name.startswith(f"{OFFLINE_MODEL}-onnx-")
    return load_openvino_towers(export, threads=1)


def tokens(encoder: ClipEncoder, texts: list[str]) -> torch.Tensor:
    batch = encoder.tokenizer(texts)
    assert encoder.text_trim is not None
    return batch[:, :encoder.text_trim.real_length(batch)]


def test_the_extra_is_seen_as_installed() -> None:
    assert openvino_available()


def test_both_towers_compile_in_f32_whatever_the_cpu_offers(towers: OpenVinoTowers) -> None:
    for compiled in (towers.image, towers.text):
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_a_result_is_not_overwritten_by_the_next_call(encoder: ClipEncoder, towers: OpenVinoTowers) -> None:
    first = towers.encode_text(tokens(encoder, ["a red car"]))
    kept = first.clone()
    towers.encode_text(tokens(encoder, ["a blue boat on a lake"]))
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


def test_threads_calling_at_once_each_get_their_own_answer(encoder: ClipEncoder, towers: OpenVinoTowers) -> None:
    texts = [f"a photo of {count} dogs on a beach" for count in range(12)] * 20
    alone = {text: towers.encode_text(tokens(encoder, [text])).numpy() for text in texts}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda text: towers.encode_text(tokens(encoder, [text])).numpy(), texts))
    for text, answer in zip(texts, together, strict=True):
        np.testing.assert_array_equal(answer, alone[text])


def test_the_image_tower_takes_prepared_pixels_of_any_batch(encoder: ClipEncoder, towers: OpenVinoTowers) -> None:
    height, width = encoder.preprocess_config.size
    pixels = torch.rand((3, 3, height, width))
    batched = towers.encode_image(pixels)
    assert batched.shape == (3, encoder.model.visual.output_dim)
    torch.testing.assert_close(towers.encode_image(pixels[1:2])[0], batched[1], rtol=1e-4, atol=1e-5)


def test_a_folder_without_an_export_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        load_openvino_towers(tmp_path, threads=1)

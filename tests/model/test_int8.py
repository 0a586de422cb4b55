"""int8 is calibrated on a sample of the collection, gives a text the same vector in any batch, and keeps recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL, OFFLINE_MODEL
from clipsearch.errors import ModelLoadError
from clipsearch.model import int8, onnx_backend
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import encoder_functions, evaluate, read_pairs
from indexer.shapes import write_shapes_corpus

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

SHAPES_CHECKPOINT = Path(__file__).parents[2] / "indexer" / "demo_weights" / "tiny-multilingual-shapes.pt"


def write_images(folder: Path, names: list[str]) -> None:
    rng = np.random.default_rng(5)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / name)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    write_shapes_corpus(folder, count=24, seed=7)
    return folder / "images"


@pytest.fixture(scope="module")
def int8_encoder(calibration: Path, tmp_path_factory: pytest.TempPathFactory) -> ClipEncoder:
    return load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx-int8",
                        onnx_cache=tmp_path_factory.mktemp("onnx"), int8_calibration=calibration)


def test_a_sample_is_spread_over_the_whole_folder_and_its_text_files(tmp_path: Path) -> None:
    write_images(tmp_path, [f"a/{number}.png" for number in range(5)] + [f"b/{number}.jpg" for number in range(5)])
    (tmp_path / "a" / "0.txt").write_text("first caption\n\nsecond caption\n")
    (tmp_path / "texts.txt").write_text("\n".join(f"text {number}" for number in range(7)))
    sample = int8.read_calibration(tmp_path, max_images=4, max_texts=3)
    assert [path.relative_to(tmp_path).as_posix() for path in sample.images] == ["a/0.png", "a/3.png", "b/1.jpg",
                                                                                 "b/4.jpg"]
    # 9 lines in path order (a/0.txt, then texts.txt): the first, the middle and the last.
    assert sample.texts == ("first caption", "text 2", "text 6")


def test_a_folder_without_text_files_is_calibrated_on_generic_queries(tmp_path: Path) -> None:
    write_images(tmp_path, ["only.png"])
    assert int8.read_calibration(tmp_path).texts == int8.GENERIC_QUERIES


@pytest.mark.parametrize(("make", "reason"), [(lambda folder: folder / "missing", "is not a folder"),
                                              (lambda folder: folder, "holds no image")])
def test_a_missing_folder_or_one_without_images_is_refused_naming_the_field(tmp_path: Path, make: object,
                                                                             reason: str) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(ModelLoadError, match=reason) as raised:
        int8.read_calibration(make(tmp_path))  # type: ignore[operator]
    assert raised.value.field == "int8_calibration"


def test_the_sample_is_named_by_its_content(tmp_path: Path) -> None:
    write_images(tmp_path, ["one.png", "two.png"])
    before = int8.read_calibration(tmp_path).digest()
    assert int8.read_calibration(tmp_path).digest() == before
    write_images(tmp_path / "other", ["one.png"])  # another picture under another name
    (tmp_path / "two.png").write_bytes((tmp_path / "other" / "one.png").read_bytes())
    assert int8.read_calibration(tmp_path).digest() != before


def test_int8_without_a_calibration_folder_is_refused_before_the_model_loads() -> None:
    with pytest.raises(ModelLoadError, match="calibrated on a sample") as raised:
        load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx-int8")
    assert raised.value.field == "int8_calibration"


def test_calibration_sees_the_tower_inputs_that_serving_will(encoder: ClipEncoder, calibration: Path) -> None:
    sample = int8.read_calibration(calibration, max_images=20, max_texts=20)
    pixels, tokens = int8.tower_inputs(encoder, sample)
    assert [len(batch) for batch in pixels] == [16, 4] and [len(batch) for batch in tokens] == [16, 4]
    height, width = encoder.preprocess_config.size
    assert pixels[0].shape[1:] == (3, height, width) and pixels[0].dtype == np.float32
    # Cut to each batch's longest real text, as encode_texts cuts them, never the whole context.
    longest = max(encoder.text_trim.real_length(encoder.tokenizer([text])) for text in sample.texts[:16])
    assert tokens[0].shape[1] == longest < encoder.context_length
    assert encoder.backend == "torch", "the encoder's own towers are back in place"


def test_an_int8_text_vector_is_the_same_alone_and_in_any_batch(int8_encoder: ClipEncoder) -> None:
    assert int8_encoder.backend == "onnx-int8" and int8_encoder.backend_cosine is not None
    query = "a large red circle in the middle"
    alone = int8_encoder.encode_texts([query])[0]
    for company in (["a dog"], ["a long caption about a small green triangle at the bottom on white"] * 7):
        batched = int8_encoder.encode_texts([*company, query, *company])
        np.testing.assert_array_equal(batched[len(company)], alone)


def test_dynamic_int8_would_give_a_text_another_vector_beside_other_texts(encoder: ClipEncoder,
                                                                          tmp_path: Path) -> None:
    # Why onnx-int8 is static: ONNX Runtime's dynamic quantisation scales by the whole batch's range.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = onnx_backend._exported(encoder, "onnx", tmp_path / "cache")
    for tower in ("image", "text"):
        quantize_dynamic(fp32 / f"{tower}.onnx", tmp_path / f"{tower}.onnx", weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=True)
    towers = onnx_backend.load_towers(tmp_path, 1)
    image_forward, text_forward = encoder.towers
    encoder.set_towers(towers.encode_image, towers.encode_text, "dynamic")
    try:
        query = "a large red circle in the middle"
        alone = encoder.encode_texts([query])[0]
        batched = encoder.encode_texts(["a long caption about a small green triangle at the bottom", query])[1]
    finally:
        encoder.set_towers(image_forward, text_forward, "torch")
    assert not np.array_equal(alone, batched)


def test_int8_calibrated_on_the_collection_keeps_recall_within_a_hundredth_of_fp32(tmp_path: Path,
                                                                                  calibration: Path) -> None:
    write_shapes_corpus(tmp_path / "pairs", count=200, seed=42)
    corpus = read_pairs(tmp_path / "pairs" / "images")
    recalls = {}
    for backend in ("onnx", "onnx-int8"):
        encoder = load_encoder(MULTILINGUAL_OFFLINE_MODEL, None, SHAPES_CHECKPOINT, "cpu", backend=backend,
                               onnx_cache=tmp_path / "onnx", int8_calibration=calibration)
        assert encoder.backend == backend
        scores, _ = evaluate(corpus, *encoder_functions(encoder, 64, 0, 50_000_000, progress=False))
        recalls[backend] = scores
    fp32, quantised = recalls["onnx"], recalls["onnx-int8"]
    assert fp32.text_to_image[10] > 0.9, "the shapes model has learnt the scenes: a loss would show"
    for direction in ("text_to_image", "image_to_text"):
        for k in (1, 5, 10):
            assert getattr(quantised, direction)[k] == pytest.approx(getattr(fp32, direction)[k], abs=0.01), \
                (direction, k)

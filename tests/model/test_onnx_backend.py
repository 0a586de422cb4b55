"""The ONNX Runtime backend gives PyTorch's embeddings, is exported once, and never leaves a service without a model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL, OFFLINE_MODEL
from clipsearch.errors import ModelLoadError
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model import int8, onnx_backend
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.store.bundle import load_bundle
from tests.support.corpora import tiny_config
from tests.support.reference import stored_vectors

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

WORDS = ["a", "dog", "on", "the", "beach", "photo", "of", "red", "car", "at", "night", "ünïcode", "🙂", "x-ray"]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_encoder(onnx_cache: Path) -> ClipEncoder:
    return load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx", onnx_cache=onnx_cache)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for number, pixels in enumerate(images(8)):
        Image.fromarray(pixels).save(folder / f"{number}.png")
    (folder / "texts.txt").write_text("\n".join(" ".join(WORDS[start:start + 5]) for start in range(len(WORDS))))
    return folder


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (rng.integers(20, 300), rng.integers(20, 300), 3), dtype=np.uint8)
            for _ in range(count)]


def test_auto_times_both_runtimes_on_a_cpu_where_both_are_installed_and_picks_torch_on_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_backend.resolve_backend("auto", torch.device("cpu")) == "auto"
    assert onnx_backend.resolve_backend("auto", torch.device("cuda")) == "torch"
    assert onnx_backend.resolve_backend("onnx-int8", torch.device("cpu")) == "onnx-int8"
    monkeypatch.setattr(onnx_backend, "openvino_available", lambda: False)
    assert onnx_backend.resolve_backend("auto", torch.device("cpu")) == "onnx"


def test_openvino_without_its_extra_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_backend, "openvino_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"needs the \[openvino\] extra") as raised:
        onnx_backend.resolve_backend("openvino-int8", torch.device("cpu"))
    assert raised.value.field == "backend"


def test_openvino_runs_the_same_export_and_gives_pytorchs_embeddings(encoder: ClipEncoder, onnx_cache: Path,
                                                                     onnx_encoder: ClipEncoder) -> None:
    compiled = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="openvino", onnx_cache=onnx_cache)
    assert compiled.backend == "openvino" and compiled.backend_cosine is not None
    assert compiled.backend_cosine >= onnx_backend.MIN_COSINE["openvino"]
    assert len(list(onnx_cache.glob(f"{OFFLINE_MODEL}-onnx-*"))) == 1, "one fp32 export, read by both runtimes"
    texts = [" ".join(WORDS[start:]) for start in range(len(WORDS))]
    np.testing.assert_allclose(compiled.encode_texts(texts), encoder.encode_texts(texts), atol=1e-4)
    pictures = [Image.fromarray(pixels) for pixels in images(5)]
    np.testing.assert_allclose(compiled.encode_images(pictures), encoder.encode_images(pictures), atol=1e-4)


@pytest.mark.parametrize("faster", ["onnx", "openvino"])
def test_auto_keeps_the_runtime_that_timed_faster_at_load(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                          faster: str) -> None:
    timed: list[str] = []

    def startup_ms(encoder: ClipEncoder, towers: onnx_backend.Towers) -> float:
        runtime = "openvino" if type(towers).__name__ == "OpenVinoTowers" else "onnx"
        timed.append(runtime)
        return 1.0 if runtime == faster else 2.0

    monkeypatch.setattr(onnx_backend, "startup_ms", startup_ms)
    chosen = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="auto", onnx_cache=onnx_cache)
    assert chosen.backend == faster and sorted(timed) == ["onnx", "openvino"]
    assert chosen.backend_startup_ms == {faster: 1.0, "openvino" if faster == "onnx" else "onnx": 2.0}


def test_start_up_timing_measures_the_candidate_and_leaves_the_encoders_towers(onnx_encoder: ClipEncoder,
                                                                               onnx_cache: Path) -> None:
    towers_before = onnx_encoder.towers
    candidate = onnx_backend.load_towers(onnx_cache / onnx_backend.cache_key(onnx_encoder, "onnx"), 1)
    assert onnx_backend.startup_ms(onnx_encoder, candidate) > 0
    assert onnx_encoder.towers == towers_before and onnx_encoder.backend == "onnx"


@pytest.mark.parametrize(("backend", "device", "reason"), [("tensorrt", "cpu", "unknown backend 'tensorrt'"),
                                                           ("onnx", "cuda", "runs on the CPU only")])
def test_an_impossible_backend_is_refused_naming_the_field(backend: str, device: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match=reason) as raised:
        onnx_backend.resolve_backend(backend, torch.device(device))
    assert raised.value.field == "backend"


def test_onnx_without_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_backend, "onnx_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"\[onnx\] extra"):
        onnx_backend.resolve_backend("onnx", torch.device("cpu"))
    assert onnx_backend.resolve_backend("auto", torch.device("cpu")) == "torch"


def test_the_onnx_encoder_runs_on_onnx_runtime(onnx_encoder: ClipEncoder) -> None:
    assert onnx_encoder.backend == "onnx"
    assert onnx_encoder.text_trim is not None


def test_every_pass_hands_onnx_runtimes_arena_back_after_it(onnx_cache: Path, onnx_encoder: ClipEncoder) -> None:
    """Without it, the arena holds the largest batch's activations for good (docs/benchmarks.md)."""
    export = next(entry for entry in onnx_cache.glob("tiny-onnx-*") if "int8" not in entry.name)
    towers = onnx_backend.load_towers(export, threads=1)
    assert towers.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    pixels = torch.zeros(3, 3, *onnx_encoder.preprocess_config.size)
    assert towers.encode_image(pixels).shape[0] == 3  # the option is one ONNX Runtime accepts on a pass


@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(WORDS), min_size=0, max_size=90).map(" ".join), min_size=1, max_size=9))
def test_onnx_text_embeddings_equal_pytorchs_at_every_length_and_batch(
        encoder: ClipEncoder, onnx_encoder: ClipEncoder, texts: list[str]) -> None:
    np.testing.assert_allclose(onnx_encoder.encode_texts(texts), encoder.encode_texts(texts), atol=1e-5)


def test_onnx_image_embeddings_equal_pytorchs_for_any_batch(encoder: ClipEncoder, onnx_encoder: ClipEncoder) -> None:
    from PIL import Image

    pictures = [Image.fromarray(array) for array in images(7)]
    for batch in (pictures[:1], pictures):
        np.testing.assert_allclose(onnx_encoder.encode_images(batch), encoder.encode_images(batch), atol=1e-5)


def test_a_second_load_uses_the_cached_export(onnx_cache: Path, onnx_encoder: ClipEncoder,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported again although the cache holds the export")

    monkeypatch.setattr(onnx_backend, "_export_fp32", no_export)
    again = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx", onnx_cache=onnx_cache)
    assert again.backend == "onnx"
    assert [entry.name for entry in onnx_cache.iterdir() if entry.name.startswith(".")] == [], "no staging left"


def test_a_damaged_cached_export_is_exported_again(onnx_cache: Path, onnx_encoder: ClipEncoder,
                                                   tmp_path: Path) -> None:
    damaged = tmp_path / "cache"
    shutil.copytree(onnx_cache, damaged)
    entry = damaged / onnx_backend.cache_key(onnx_encoder, "onnx")
    (entry / "text.onnx.data").write_bytes(b"truncated")
    repaired = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx", onnx_cache=damaged)
    assert repaired.backend == "onnx"
    assert (entry / "text.onnx.data").stat().st_size > len(b"truncated")


def test_a_failed_self_check_keeps_pytorch_with_a_warning(onnx_cache: Path, encoder: ClipEncoder,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(onnx_backend.MIN_COSINE, "onnx", 1.5)  # no export can reach it
    with caplog.at_level(logging.WARNING, logger="clipsearch"):
        fallen_back = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx",
                                   onnx_cache=onnx_cache)
    assert fallen_back.backend == "torch"
    assert "agrees with PyTorch only to cosine" in caplog.text
    texts = ["a dog", "a red car at night"]
    np.testing.assert_array_equal(fallen_back.encode_texts(texts), encoder.encode_texts(texts))


def test_int8_that_costs_too_much_accuracy_runs_the_fp32_export_instead(onnx_cache: Path, calibration: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(onnx_backend.MIN_COSINE, "onnx-int8", 0.999999)  # int8 cannot reach it
    with caplog.at_level(logging.WARNING, logger="clipsearch"):
        encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx-int8",
                               onnx_cache=onnx_cache, int8_calibration=calibration)
    assert encoder.backend == "onnx"
    assert "running the fp32 export instead" in caplog.text
    assert encoder.backend_cosine is not None and encoder.backend_cosine > 0.9999  # the fp32 export's figure


def test_a_failed_export_keeps_pytorch_and_leaves_no_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    def broken_exporter(*args: object) -> None:
        raise RuntimeError("the exporter failed halfway")

    monkeypatch.setattr(onnx_backend, "_export_fp32", broken_exporter)
    with caplog.at_level(logging.WARNING, logger="clipsearch"):
        fallen_back = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx",
                                   onnx_cache=tmp_path)
    assert fallen_back.backend == "torch"
    assert "could not be prepared" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_an_entry_another_process_finished_first_is_kept(tmp_path: Path) -> None:
    entry = tmp_path / "model-onnx-0123"
    entry.mkdir()
    (entry / "export.json").write_text("theirs")
    onnx_backend._export_into(entry, lambda staging: (staging / "export.json").write_text("mine"))
    assert (entry / "export.json").read_text() == "theirs"
    assert [path.name for path in tmp_path.iterdir()] == [entry.name]


def test_int8_is_close_to_pytorch_but_not_equal(encoder: ClipEncoder, onnx_cache: Path, calibration: Path) -> None:
    quantised = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx-int8", onnx_cache=onnx_cache,
                             int8_calibration=calibration)
    assert quantised.backend == "onnx-int8"
    assert quantised.backend_cosine is not None and quantised.backend_cosine >= onnx_backend.MIN_COSINE["onnx-int8"]
    entry = onnx_cache / onnx_backend.cache_key(encoder, "onnx-int8", int8.read_calibration(calibration))
    assert json.loads((entry / "export.json").read_text())["calibration"]["images"] == 8
    texts = [" ".join(WORDS[start:]) for start in range(len(WORDS))]
    cosines = (quantised.encode_texts(texts) * encoder.encode_texts(texts)).sum(axis=1)
    assert cosines.min() >= onnx_backend.MIN_COSINE["onnx-int8"]
    assert cosines.min() < 0.99999, "int8 weights change the embeddings a little"


def test_a_full_context_text_tower_exports_with_a_fixed_length(encoder: ClipEncoder, onnx_cache: Path) -> None:
    untrimmed = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx", onnx_cache=onnx_cache,
                             text_trim=False)
    assert untrimmed.backend == "onnx" and untrimmed.text_trim is None
    texts = ["a", "a photo of a red car at night on the beach"]
    np.testing.assert_allclose(untrimmed.encode_texts(texts), encoder.encode_texts(texts), atol=1e-5)


def test_a_bundle_built_on_onnx_holds_pytorchs_vectors(tmp_path: Path, onnx_cache: Path, bundle_path: Path,
                                                       corpus_dir: Path) -> None:
    out = tmp_path / "bundle"
    build(tiny_config(out, images=corpus_dir / "images", texts=corpus_dir / "texts.txt", backend="onnx",
                      onnx_cache=onnx_cache))
    built_on_onnx, built_on_torch = load_bundle(out), load_bundle(bundle_path)
    try:
        for modality in Modality:
            onnx_ids, onnx_vectors = stored_vectors(built_on_onnx, modality)
            torch_ids, torch_vectors = stored_vectors(built_on_torch, modality)
            np.testing.assert_array_equal(onnx_ids, torch_ids)
            np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-5)
    finally:
        built_on_onnx.close()
        built_on_torch.close()


@pytest.mark.parametrize("name", [MULTILINGUAL_OFFLINE_MODEL, "tiny-chinese-clip"])
def test_hugging_face_towers_export_with_trimming_and_give_pytorchs_embeddings(name: str, onnx_cache: Path) -> None:
    reference = load_encoder(name, pretrained=None, device="cpu", backend="torch")
    exported = load_encoder(name, pretrained=None, device="cpu", backend="onnx", onnx_cache=onnx_cache)
    assert exported.backend == "onnx" and exported.text_trim is not None
    for texts in (["左边的红色圆形"], ["a red circle on the left", "红色 car", "右上角的蓝色三角形" * 3],
                  [" ".join(WORDS * 8)]):
        np.testing.assert_allclose(exported.encode_texts(texts), reference.encode_texts(texts), atol=1e-5)
    pixels = [Image.fromarray(array) for array in images(3)]
    np.testing.assert_allclose(exported.encode_images(pixels), reference.encode_images(pixels), atol=1e-5)


def test_releasing_the_pytorch_model_keeps_every_embedding_and_it_comes_back_the_same(onnx_cache: Path,
                                                                                     encoder: ClipEncoder) -> None:
    released = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx", onnx_cache=onnx_cache)
    pictures = [Image.fromarray(array) for array in images(3)]
    texts, vectors = released.encode_texts(WORDS), released.encode_images(pictures)
    assert released.release_model() and not released.holds_torch_weights
    assert released.text_trim is not None and released.text_trim.model is None  # no hidden hold on the weights
    assert not released.release_model(), "released once"
    np.testing.assert_array_equal(released.encode_texts(WORDS), texts)
    np.testing.assert_array_equal(released.encode_images(pictures), vectors)
    rebuilt = released.model.state_dict()  # built again on first use, as loaded
    assert released.holds_torch_weights and released.text_trim.model is released.model
    assert all(torch.equal(rebuilt[name], tensor) for name, tensor in encoder.model.state_dict().items())
    np.testing.assert_array_equal(released.encode_texts(WORDS), texts)


def test_only_a_model_whose_towers_run_elsewhere_is_released(encoder: ClipEncoder, onnx_cache: Path) -> None:
    torch_encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="torch")
    assert not torch_encoder.release_model() and torch_encoder.holds_torch_weights
    calibrated = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="onnx", onnx_cache=onnx_cache)
    assert calibrated.release_model()
    assert (calibrated.logit_scale, calibrated.logit_bias) == (float(encoder.model.logit_scale.detach()), None)

"""Fine-tuning learns from pairs, keeps its best epoch, locks what it is told to, and writes a loadable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.config import OFFLINE_MODEL
from clipsearch.errors import FinetuneError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import PairedCorpus, encoder_functions, evaluate, read_pairs
from clipsearch.quality.finetune import FinetuneConfig, FinetuneResult, _loss_function, finetune, split_held_out
from indexer.cli import main
from indexer.shapes import CAPTIONS_PER_IMAGE, write_shapes_corpus

SHORT_RUN = FinetuneConfig(epochs=8, batch_size=32, learning_rate=2e-3, warmup_steps=20, held_out=100, patience=8)


def fresh_encoder() -> ClipEncoder:
    return load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_corpus(out, count=600, seed=5)
    return out / "images"


@pytest.fixture(scope="module")
def tuned(shapes: Path) -> tuple[ClipEncoder, FinetuneResult]:
    encoder = fresh_encoder()
    return encoder, finetune(encoder, read_pairs(shapes), SHORT_RUN, progress=False)


def test_the_shapes_corpus_follows_from_its_seed(tmp_path: Path) -> None:
    write_shapes_corpus(tmp_path / "a", count=30, seed=2)
    write_shapes_corpus(tmp_path / "b", count=30, seed=2)
    for first in sorted((tmp_path / "a" / "images").iterdir()):
        assert first.read_bytes() == (tmp_path / "b" / "images" / first.name).read_bytes()
    corpus = read_pairs(tmp_path / "a" / "images")
    assert len(corpus.images) == 30 and len(corpus.captions) == 30 * CAPTIONS_PER_IMAGE
    assert any(" and " in caption for caption in corpus.captions), "some scenes hold two shapes"


def test_the_held_out_split_is_by_image_and_disjoint(shapes: Path) -> None:
    corpus = read_pairs(shapes)
    for held_out, expected in ((0.25, 150), (40, 40)):
        train, held = split_held_out(corpus, held_out, seed=1)
        assert len(held.images) == expected and len(train.images) == 600 - expected
        assert not {item.uri for item in train.images} & {item.uri for item in held.images}
        assert len(train.captions) + len(held.captions) == len(corpus.captions)
        assert all(caption in held.captions for caption in _captions_of(corpus, held.images[0].uri))


def _captions_of(corpus: PairedCorpus, uri: str) -> list[str]:
    position = [item.uri for item in corpus.images].index(uri)
    return [caption for caption, owner in zip(corpus.captions, corpus.caption_image, strict=True) if owner == position]


@pytest.mark.parametrize("held_out", [0, 599, 0.0001])
def test_a_split_that_leaves_nothing_to_train_or_test_is_refused(shapes: Path, held_out: float) -> None:
    with pytest.raises(FinetuneError) as raised:
        split_held_out(read_pairs(shapes), held_out, seed=0)
    assert raised.value.field == "held_out"


def test_a_short_run_beats_the_untrained_model_on_held_out_images(tuned: tuple[ClipEncoder, FinetuneResult]) -> None:
    _, result = tuned
    assert result.after.text_to_image[10] > result.before.text_to_image[10]
    assert result.best_epoch >= 1 and len(result.epochs) == SHORT_RUN.epochs
    best = result.epochs[result.best_epoch - 1]
    top = max(epoch.scores["text_to_image"]["R@5"] for epoch in result.epochs)
    assert best.scores["text_to_image"]["R@5"] == top
    tied = [epoch.scores["text_to_image_mean_rank"] for epoch in result.epochs
            if epoch.scores["text_to_image"]["R@5"] == top]
    assert best.scores["text_to_image_mean_rank"] == min(tied), "equal R@5: the lower mean rank wins"
    assert result.after.as_dict() == best.scores, "the weights kept are the best epoch's"


def test_the_model_holds_the_best_epochs_weights(tuned: tuple[ClipEncoder, FinetuneResult], shapes: Path) -> None:
    encoder, result = tuned
    _, held = split_held_out(read_pairs(shapes), SHORT_RUN.held_out, SHORT_RUN.seed)
    scores, _ = evaluate(held, *encoder_functions(encoder, 64, 0, 10**8, progress=False))
    assert scores == result.after


def test_a_locked_image_tower_does_not_move(shapes: Path) -> None:
    encoder = fresh_encoder()
    before = {name: tensor.clone() for name, tensor in encoder.model.visual.state_dict().items()}
    text_before = encoder.model.token_embedding.weight.clone()
    text_moved = []

    def after_epoch(_: object) -> None:  # before the best epoch's weights are put back
        text_moved.append(not torch.equal(encoder.model.token_embedding.weight, text_before))
        for name, tensor in encoder.model.visual.state_dict().items():
            assert torch.equal(tensor, before[name]), name

    config = FinetuneConfig(epochs=1, batch_size=32, held_out=100, lock_image=True)
    finetune(encoder, read_pairs(shapes), config, progress=False, on_epoch=after_epoch)
    assert text_moved == [True], "the text tower was trained"


@pytest.mark.parametrize("model", ["tiny-multilingual", "tiny-chinese-clip"])
def test_models_with_hugging_face_text_towers_learn_from_bilingual_pairs(model: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the [multilingual] extra is not installed")
    write_shapes_corpus(tmp_path, count=300, seed=5, language="both")
    encoder = load_encoder(model, pretrained=None, device="cpu", backend="torch")
    # A random BERT (Chinese-CLIP's text tower) starts with nearly one vector for every text: it takes ~10 epochs.
    config = FinetuneConfig(epochs=16, batch_size=32, learning_rate=1e-3, warmup_steps=5, held_out=60, patience=16)
    result = finetune(encoder, read_pairs(tmp_path / "images"), config, progress=False)
    assert result.after.text_to_image[10] > result.before.text_to_image[10]


def test_the_triplet_loss_is_zero_past_the_margin_and_counts_the_hardest_negative() -> None:
    triplet = _loss_function(fresh_encoder().model, FinetuneConfig(loss="triplet", margin=0.2))
    aligned = torch.eye(3)
    assert float(triplet(aligned, aligned, torch.tensor(1.0))) == 0.0
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Similarity (image × text) [[1, .6], [0, .8]]. Pair 0: its positive 1, its hardest negative text
    # 0.6 and image 0. Pair 1: its positive 0.8, its hardest negative text 0 and image 0.6.
    assert float(triplet(images, texts, torch.tensor(1.0))) == pytest.approx(0.0, abs=1e-6)  # 0.2 + 0.6 < 1, < 0.8
    tight = _loss_function(fresh_encoder().model, FinetuneConfig(loss="triplet", margin=0.5))
    # Pair 0: 0.5 - 1 + 0.6 = 0.1 (text side), nothing on the image side; pair 1: 0.5 - 0.8 + 0.6 = 0.3.
    assert float(tight(images, texts, torch.tensor(1.0))) == pytest.approx((0.1 + 0.3) / 2)


@pytest.mark.parametrize(("encoder_options", "config", "field"), [
    ({"backend": "onnx"}, FinetuneConfig(), "backend"),
    ({}, FinetuneConfig(loss="arcface"), "loss"),
    ({}, FinetuneConfig(lock_image=True, lock_text=True), "lock_text"),
    ({}, FinetuneConfig(batch_size=1), "batch_size")])
def test_impossible_settings_are_refused_naming_the_field(shapes: Path, tmp_path: Path, encoder_options: dict[str, str],
                                                          config: FinetuneConfig, field: str) -> None:
    if encoder_options.get("backend") == "onnx":
        pytest.importorskip("onnxruntime")
    encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu", onnx_cache=tmp_path,
                           **{"backend": "torch", **encoder_options})
    with pytest.raises(FinetuneError) as raised:
        finetune(encoder, read_pairs(shapes), config, progress=False)
    assert raised.value.field == field


def test_the_command_writes_a_checkpoint_that_build_eval_and_the_server_load(
        shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "tuned.pt"
    tiny = ["--model", "tiny", "--device", "cpu", "--no-progress"]
    assert main(["finetune", "--pairs", str(shapes), "--out", str(checkpoint), *tiny, "--epochs", "2",
                 "--batch-size", "32", "--held-out", "100", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["base_model"].startswith("tiny (random weights") and record["train_images"] == 500
    assert len(record["epochs"]) == 2 and set(record["before"]["text_to_image"]) == {"R@1", "R@5", "R@10"}
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["clipsearch_finetune"] == record
    loaded = load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=checkpoint, device="cpu", backend="torch")
    untrained = fresh_encoder()
    texts = ["a small red circle on the left", "a blue square at the top"]
    assert not np.allclose(loaded.encode_texts(texts), untrained.encode_texts(texts), atol=1e-3)
    assert main(["eval", "--pairs", str(shapes), *tiny, "--checkpoint", str(checkpoint), "--backend", "torch",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"].startswith("tiny (checkpoint sha256")


@pytest.mark.gpu
def test_on_a_gpu_mixed_precision_training_beats_the_untrained_model(shapes: Path) -> None:
    encoder = load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda", backend="torch", precision="fp32")
    result = finetune(encoder, read_pairs(shapes), SHORT_RUN, progress=False)
    assert encoder.dtype == torch.float32, "autocast trains in fp16 over fp32 weights"
    assert result.after.text_to_image[10] > result.before.text_to_image[10]


def test_images_streamed_each_epoch_train_exactly_as_cached_ones(shapes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past PIXEL_CACHE_BYTES the images are decoded again every epoch, in the same order.
    config = FinetuneConfig(epochs=2, batch_size=32, held_out=100, patience=5)
    cached = finetune(fresh_encoder(), read_pairs(shapes), config, progress=False)
    monkeypatch.setattr("clipsearch.quality.finetune.PIXEL_CACHE_BYTES", 0)
    streamed = finetune(fresh_encoder(), read_pairs(shapes), config, progress=False)
    assert [epoch.loss for epoch in streamed.epochs] == pytest.approx([epoch.loss for epoch in cached.epochs],
                                                                       rel=1e-5)
    assert streamed.after == cached.after

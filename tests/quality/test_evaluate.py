"""The eval metric is CLIP_benchmark's recall@k and mean rank, computed in blocks and checked against brute force."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from clipsearch.errors import SourceError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.quality import evaluate as evaluation
from clipsearch.quality.evaluate import PairedCorpus, RetrievalScores, encoder_functions, read_pairs, retrieval_ranks
from clipsearch.store.bundle import load_bundle
from clipsearch.store.manifest import read_manifest, record_evaluation
from indexer.cli import main
from tests.support.corpora import make_paired_corpus, write_manifest
from tests.support.imagefiles import image_bytes, noise_image, save
from tests.support.reference import unit_vectors
from tests.support.serving import serve

TINY = ["--model", "tiny", "--device", "cpu", "--workers", "0", "--no-progress", "--backend", "torch"]


def brute_force_ranks(images: np.ndarray, captions: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the whole score matrix, each caption's image's rank and each image's best caption's rank."""
    scores = captions @ images.T
    text_ranks = np.array([(row > row[image]).sum() for row, image in zip(scores, owner, strict=True)])
    image_ranks = np.array([min((scores[:, image] > scores[caption, image]).sum()
                                for caption in np.flatnonzero(owner == image)) for image in range(len(images))])
    return text_ranks, image_ranks


@pytest.mark.parametrize("budget", [evaluation.SCORE_BUDGET, 7 * 40])  # whole, and blocks of 7 rows
def test_block_ranks_equal_the_brute_force_ranks(budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluation, "SCORE_BUDGET", budget)
    images, captions = unit_vectors(40, dim=16, seed=1), unit_vectors(100, dim=16, seed=2)
    owner = np.random.default_rng(3).integers(0, 40, 100)
    owner[:40] = np.arange(40)  # every image has at least one caption
    text_ranks, image_ranks = retrieval_ranks(images, captions, owner)
    expected_text, expected_image = brute_force_ranks(images, captions, owner)
    np.testing.assert_array_equal(text_ranks, expected_text)
    np.testing.assert_array_equal(image_ranks, expected_image)


def test_recall_counts_a_hit_below_k_and_mean_rank_starts_at_one() -> None:
    scores = RetrievalScores.of_ranks(text_ranks=np.array([0, 4, 9, 10]), image_ranks=np.array([0, 1]))
    assert scores.text_to_image == {1: 0.25, 5: 0.5, 10: 0.75}
    assert scores.image_to_text == {1: 0.5, 5: 1.0, 10: 1.0}
    assert scores.text_to_image_mean_rank == pytest.approx((1 + 5 + 10 + 11) / 4)
    assert scores.image_to_text_mean_rank == 1.5
    assert scores.as_dict()["text_to_image"] == {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75}


def test_captions_that_are_their_images_are_all_found_first() -> None:
    images = unit_vectors(30, dim=8, seed=4)
    owner = np.repeat(np.arange(30), 2)
    text_ranks, image_ranks = retrieval_ranks(images, images[owner], owner)
    assert RetrievalScores.of_ranks(text_ranks, image_ranks).text_to_image[1] == 1.0
    assert not image_ranks.any()


def test_a_folder_gives_one_caption_per_sidecar_line_and_skips_images_without_one(tmp_path: Path) -> None:
    make_paired_corpus(tmp_path, 3, captions_per_image=3)
    save(tmp_path / "uncaptioned.png", image_bytes(noise_image(9)))
    (tmp_path / "blank.png").write_bytes(image_bytes(noise_image(10)))
    (tmp_path / "blank.txt").write_text("\n  \n")
    corpus = read_pairs(tmp_path)
    assert len(corpus.images) == 3 and len(corpus.captions) == 9
    assert corpus.captions[:3] == ["caption 0 of pair 0", "caption 1 of pair 0", "caption 2 of pair 0"]
    np.testing.assert_array_equal(corpus.caption_image, np.repeat(np.arange(3), 3))
    assert sorted(Path(uri).name for uri, reason in corpus.skipped if reason == "no caption") == \
        ["blank.png", "uncaptioned.png"]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_a_manifest_gives_one_pair_per_row_and_groups_rows_of_one_image(tmp_path: Path, kind: str) -> None:
    for name in ("a", "b"):
        save(tmp_path / f"{name}.png", image_bytes(noise_image(ord(name))))
    rows = [{"image": "a.png", "caption": "first of a"}, {"image": "b.png", "caption": "only b"},
            {"image": "a.png", "caption": "second of a"}, {"image": "gone.png", "caption": "lost"}]
    corpus = read_pairs(write_manifest(tmp_path, kind, rows))
    assert [Path(item.uri).name for item in corpus.images] == ["a.png", "b.png"]
    assert corpus.captions == ["first of a", "only b", "second of a"]
    np.testing.assert_array_equal(corpus.caption_image, [0, 1, 0])
    assert [(Path(uri).name, reason) for uri, reason in corpus.skipped] == [("gone.png", "file not found")]


def test_a_corpus_without_pairs_is_refused_naming_the_field(tmp_path: Path) -> None:
    save(tmp_path / "alone.png", image_bytes(noise_image(1)))
    with pytest.raises(SourceError, match="no image with a caption") as raised:
        read_pairs(tmp_path)
    assert raised.value.field == "pairs"


def test_an_undecodable_image_is_left_out_with_its_captions(tmp_path: Path, encoder: ClipEncoder) -> None:
    make_paired_corpus(tmp_path, 4, captions_per_image=2)
    (tmp_path / "pair_001.png").write_bytes(b"not an image at all")
    scores, scored = evaluation.evaluate(read_pairs(tmp_path), *encoder_functions(encoder, 3, 0, 10**8, False))
    assert (scores.images, scores.captions) == (3, 6)
    assert [Path(uri).name for uri, _ in scored.skipped] == ["pair_001.png"]
    np.testing.assert_array_equal(scored.caption_image, [0, 0, 1, 1, 2, 2])
    assert scored.captions[2] == "caption 0 of pair 2"


def test_evaluate_scores_the_encoders_own_vectors(tmp_path: Path, encoder: ClipEncoder) -> None:
    corpus = read_pairs(make_paired_corpus(tmp_path, 12, captions_per_image=2))
    scores, _ = evaluation.evaluate(corpus, *encoder_functions(encoder, 5, 0, 10**8, False))
    images = encoder.encode_images([Image.open(item.path).convert("RGB") for item in corpus.images])
    expected = RetrievalScores.of_ranks(*brute_force_ranks(images, encoder.encode_texts(corpus.captions),
                                                           corpus.caption_image))
    assert scores == expected


def test_the_eval_command_prints_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = make_paired_corpus(tmp_path / "pairs", 6)
    assert main(["eval", "--pairs", str(pairs), *TINY]) == 0
    table = capsys.readouterr().out
    assert "text → image" in table and "image → text" in table and "6 images, 12 captions" in table
    assert main(["eval", "--pairs", str(pairs), *TINY, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["images"] == 6 and record["captions"] == 12 and record["backend"] == "torch"
    assert set(record["text_to_image"]) == {"R@1", "R@5", "R@10"} and record["text_to_image_mean_rank"] >= 1


def test_eval_of_a_bundle_records_the_figures_in_its_manifest_and_the_bundle_still_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = make_paired_corpus(tmp_path / "pairs", 5)
    bundle = tmp_path / "bundle"
    assert main(["build", "--images", str(pairs), "--out", str(bundle), *TINY]) == 0
    tiny_without_model = [argument for argument in TINY if argument not in ("--model", "tiny")]
    capsys.readouterr()
    assert main(["eval", "--pairs", str(pairs), "--bundle", str(bundle), *tiny_without_model, "--json"]) == 0
    [record] = read_manifest(bundle).evaluations
    assert record == json.loads(capsys.readouterr().out)
    assert record["images"] == 5 and record["model"].startswith("tiny")
    load_bundle(bundle).close()  # every checksum still holds


def test_eval_refuses_a_model_beside_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--pairs", str(tmp_path), "--bundle", str(tmp_path), "--model", "tiny"])
    assert "--bundle and --through name the model: leave out --model and --pretrained" in capsys.readouterr().err


def test_concurrent_records_are_all_kept(bundle_path: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_path, bundle)
    threads = [threading.Thread(target=record_evaluation, args=(bundle, {"run": number})) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(record["run"] for record in read_manifest(bundle).evaluations) == list(range(8))


def test_without_is_the_identity_when_nothing_is_unusable() -> None:
    corpus = PairedCorpus(images=[], captions=[], caption_image=np.zeros(0, dtype=np.int64))
    assert corpus.without({}) is corpus


def test_a_flat_index_served_over_http_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = make_paired_corpus(tmp_path / "pairs", 12)
    corpus = read_pairs(pairs)
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"{caption}\n" for caption in corpus.captions))
    bundle = tmp_path / "bundle"
    assert main(["build", "--images", str(pairs), "--texts", str(captions), "--out", str(bundle), *TINY]) == 0
    untitled = [argument for argument in TINY if argument not in ("--model", "tiny")]
    capsys.readouterr()
    with serve(Settings(bundle_path=bundle, device="cpu")) as url:  # type: ignore[call-arg]
        assert main(["eval", "--pairs", str(pairs), "--through", url, *untitled, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    served = record["through"]
    assert served["url"] == url and served["images"] == 12 and served["captions"] == 24
    assert served["text_to_image"] == record["text_to_image"] and served["image_to_text"] == record["image_to_text"]
    assert served["loss"] == {"text_to_image": {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0},
                              "image_to_text": {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}}
    assert served["text_to_image_mean_rank"] is None  # only the top 10 are seen through the server


def test_through_a_server_that_cannot_be_reached_is_a_clear_error(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pairs = make_paired_corpus(tmp_path / "pairs", 2)
    assert main(["eval", "--pairs", str(pairs), "--through", "http://127.0.0.1:9", "--no-progress"]) == 2
    assert "--through" in capsys.readouterr().err


def test_eval_measures_searches_of_the_bundle_with_the_options_given(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pairs = make_paired_corpus(tmp_path / "pairs", 6)  # captions "caption 0 of pair N", "caption 1 of pair N"
    bundle = tmp_path / "bundle"
    assert main(["build", "--images", str(pairs), "--out", str(bundle), *TINY, "--fuse", "image=1,caption=1"]) == 0
    tiny_without_model = [argument for argument in TINY if argument not in ("--model", "tiny")]
    capsys.readouterr()
    assert main(["eval", "--pairs", str(pairs), "--bundle", str(bundle), *tiny_without_model, "--mode", "keyword"]) == 0
    assert "by search" in capsys.readouterr().out
    keyword = read_manifest(bundle).evaluations[-1]["search"]
    # The captions of pairs 2 to 5 hold a number found in no other image's: keyword search puts their
    # image first. Pairs 0 and 1 share theirs with every "caption 0 of …" and "caption 1 of …".
    assert keyword["options"] == {"mode": "keyword"}
    assert keyword["text_to_image"]["R@1"] >= 10 / 12 and keyword["text_to_image"]["R@5"] == 1.0
    assert main(["eval", "--pairs", str(pairs), "--bundle", str(bundle), *tiny_without_model, "--json",
                 "--fuse", "image=1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["search"]["options"] == {"fusion": {"image": 1.0}}  # as given: a part left out weighs 0
    # The picture alone, through the bundle's exact index, is the model's own text → image figure at k ≤ 10.
    assert record["search"]["text_to_image"] == record["text_to_image"]

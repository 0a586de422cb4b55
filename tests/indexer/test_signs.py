"""The rendered text corpus: words in English and Chinese on cluttered backgrounds, and its truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.cli import main
from indexer.signs import CHINESE_KEYS, ENGLISH_KEYS, signs, write_signs_corpus


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.jpg"))}


def test_the_same_seed_renders_the_same_files(tmp_path: Path) -> None:
    write_signs_corpus(tmp_path / "a", 6, seed=3)
    write_signs_corpus(tmp_path / "b", 6, seed=3)
    write_signs_corpus(tmp_path / "c", 6, seed=4)
    assert digests(tmp_path / "a" / "images") == digests(tmp_path / "b" / "images")
    assert digests(tmp_path / "a" / "images") != digests(tmp_path / "c" / "images")
    assert (tmp_path / "a" / "truth.jsonl").read_text() == (tmp_path / "b" / "truth.jsonl").read_text()


def test_every_key_word_is_shown_by_one_image_until_the_vocabulary_runs_out() -> None:
    made = signs(2 * len(CHINESE_KEYS) + 2, seed=0, language="both")
    english = [sign.key for sign in made if sign.language == "en"]
    chinese = [sign.key for sign in made if sign.language == "zh"]
    assert len(set(english)) == len(english) and set(english) <= set(ENGLISH_KEYS)
    assert sorted(chinese[:-1]) == sorted(CHINESE_KEYS) and chinese[-1] in chinese[:-1]  # then round again
    for sign in made:
        assert sign.key in sign.lines[0] and 1 <= len(sign.lines) <= 2
        assert -6 <= sign.angle <= 6 and 20 <= sign.size <= 44


def test_only_the_language_asked_for_is_rendered() -> None:
    assert {sign.language for sign in signs(8, language="zh")} == {"zh"}
    assert [sign.language for sign in signs(4, language="both")] == ["en", "zh", "en", "zh"]


def test_a_sign_is_a_cluttered_picture_not_a_plain_page(tmp_path: Path) -> None:
    write_signs_corpus(tmp_path, 2, seed=1)
    with Image.open(tmp_path / "images" / "sign-00000.jpg") as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert image.size == (480, 320)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000


def test_the_command_writes_images_and_their_truth_and_no_sidecars(tmp_path: Path) -> None:
    assert main(["demo-data", "--kind", "signs", "--count", "4", "--language", "both", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [record["image"] for record in records] == [f"images/sign-{n:05d}.jpg" for n in range(4)]
    assert all((tmp_path / record["image"]).is_file() and record["key"] in record["lines"][0] for record in records)
    assert sorted(path.suffix for path in (tmp_path / "images").iterdir()) == [".jpg"] * 4

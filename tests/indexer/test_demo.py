"""`indexer demo-data`: the shapes come with the shipped bilingual checkpoint, which answers both languages alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.util.files import file_sha256
from clipsearch.util.images import read_image_file
from indexer.cli import main
from indexer.demo import DEMO_CHECKPOINT
from indexer.shapes import COLOURS, POSITIONS, SHAPES, ZH_COLOURS, ZH_POSITIONS, ZH_SHAPES, write_shapes_corpus

pytest.importorskip("transformers", reason="the [multilingual] extra is not installed")

def test_the_shapes_command_writes_the_shipped_checkpoint_beside_them(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model" / "tuned.pt"
    assert main(["demo-data", "--kind", "shapes", "--language", "both", "--count", "3", "--out", str(tmp_path),
                 "--checkpoint", str(checkpoint)]) == 0
    assert file_sha256(checkpoint) == file_sha256(DEMO_CHECKPOINT)
    assert len(list((tmp_path / "images").glob("*.png"))) == 3


def test_the_checkpoint_comes_only_with_the_shapes(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["demo-data", "--kind", "photos", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt")])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], np.ndarray, ClipEncoder]:
    """600 of the demo's scenes: their first (English) captions and image vectors, and the demo's encoder."""
    out = tmp_path_factory.mktemp("demo")
    write_shapes_corpus(out, count=600, seed=0, language="both")
    encoder = load_encoder("tiny-multilingual", pretrained=None, checkpoint=DEMO_CHECKPOINT, device="cpu",
                           backend="torch")
    paths = sorted((out / "images").glob("*.png"))
    captions = [path.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0] for path in paths]
    vectors = encoder.encode_images(torch.stack([encoder.prepare_image(read_image_file(path)) for path in paths]))
    return captions, vectors, encoder


def test_the_shipped_demo_answers_chinese_queries_as_their_english_translations(
        scenes: tuple[list[str], np.ndarray, ClipEncoder]) -> None:
    # All 90 of the demo's queries. On 600 scenes (about 9 per query, as few as 2), measured: 0.76
    # (English) and 0.73 (Chinese) of each top 3 right, 8.5 of 10 shared; chance is about 0.01 and 0.2.
    captions, vectors, encoder = scenes
    meanings = [f"{colour} {shape} {position}" for colour in COLOURS for shape in SHAPES for position in POSITIONS]
    queries = {"en": [f"a {meaning}" for meaning in meanings],
               "zh": [f"{ZH_POSITIONS[position]}的{ZH_COLOURS[colour]}{ZH_SHAPES[shape]}"
                      for colour in COLOURS for shape in SHAPES for position in POSITIONS]}
    top = {language: np.argsort(-(encoder.encode_texts(texts) @ vectors.T), axis=1, kind="stable")[:, :10]
           for language, texts in queries.items()}
    for language, rows in top.items():
        right = np.mean([[meaning in captions[row] for row in best[:3]]
                         for meaning, best in zip(meanings, rows, strict=True)])
        assert right >= 0.6, (language, right)
    shared = np.mean([len(set(english) & set(chinese)) for english, chinese in zip(top["en"], top["zh"], strict=True)])
    assert shared >= 7

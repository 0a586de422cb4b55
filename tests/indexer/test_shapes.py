"""The shapes corpus: the same scenes whatever the captions' language, captions in natural Chinese too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.cli import main
from indexer.shapes import (
    CAPTIONS_PER_IMAGE,
    ZH_COLOURS,
    ZH_POSITIONS,
    ZH_SHAPES,
    Scene,
    Shape,
    random_scene,
    write_shapes_corpus,
)


def test_the_scenes_are_the_same_whatever_the_language(tmp_path: Path) -> None:
    for language in ("en", "zh", "both"):
        write_shapes_corpus(tmp_path / language, count=6, seed=4, language=language)
    for number in range(6):
        name = f"images/shape_{number:05d}.png"
        assert (tmp_path / "en" / name).read_bytes() == (tmp_path / "zh" / name).read_bytes() \
            == (tmp_path / "both" / name).read_bytes()
        english, chinese, both = ((tmp_path / language / name).with_suffix(".txt").read_text().splitlines()
                                  for language in ("en", "zh", "both"))
        assert len(english) == len(chinese) == CAPTIONS_PER_IMAGE and both == english + chinese


def test_a_red_circle_on_the_left_is_called_as_a_chinese_speaker_would() -> None:
    scene = Scene((Shape("circle", "red", "large", "on the left"),), "white")
    assert scene.captions("zh") == ["左边有一个大的红色圆形", "白色背景上，左边的红色圆形",
                                    "图里只有一个红色的圆形，很大，在左边"]
    pair = Scene((Shape("triangle", "blue", "small", "at the top"), Shape("square", "green", "small", "at the bottom")),
                 "black")
    assert pair.captions("zh")[1] == "下方的绿色正方形和上方的蓝色三角形"


def test_every_chinese_caption_names_each_shapes_colour_and_kind_together() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        scene = random_scene(rng)
        for caption in scene.chinese_captions():
            for shape in scene.shapes:
                assert ZH_COLOURS[shape.colour] in caption and ZH_SHAPES[shape.kind] in caption, caption
        for shape in scene.shapes:
            assert ZH_POSITIONS[shape.position] in scene.chinese_captions()[0]


def test_the_command_writes_chinese_captions_and_refuses_an_unknown_language(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--kind", "shapes", "--language", "zh", "--count", "2", "--out", str(tmp_path)]) == 0
    caption = (tmp_path / "images" / "shape_00000.txt").read_text()
    assert any(word in caption for word in ZH_SHAPES.values())
    with pytest.raises(SystemExit):
        main(["demo-data", "--kind", "shapes", "--language", "fr", "--out", str(tmp_path)])
    assert "invalid choice: 'fr'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="language must be one of en, zh, both"):
        write_shapes_corpus(tmp_path, count=1, language="fr")

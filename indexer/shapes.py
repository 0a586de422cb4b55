"""A synthetic paired corpus: rendered scenes of coloured shapes, each with captions in several phrasings.

Every scene is drawn from the seed alone, so the same (count, seed) gives the same files. A scene
has one shape, or (every third scene) two, each with a colour, a size and a position, on a plain
background; each shape is shifted, scaled and shaded a little at random, so that no two scenes
render alike and a held-out scene is never a copy of a training one. Each image gets a sidecar
`name.txt` with CAPTIONS_PER_IMAGE captions per language, one per line, the format `indexer eval`
and `indexer finetune` read. Two objects make the task harder than naming one: the captions bind
each colour to its shape and its side.

Captions come in English, in Chinese written as a native speaker would (左边的红色圆形, not a word-for-word
rendering of "a red circle on the left"), or both (LANGUAGES). The language never changes the
scenes: the same (count, seed) renders the same images whatever captions they get.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 220), "yellow": (240, 210, 30),
           "purple": (140, 50, 170), "orange": (245, 130, 20)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.16, "large": 0.3}
POSITIONS = {"on the left": (0.27, 0.5), "on the right": (0.73, 0.5), "at the top": (0.5, 0.27),
             "at the bottom": (0.5, 0.73), "in the middle": (0.5, 0.5)}
PAIRED_POSITIONS = (("on the left", "on the right"), ("at the top", "at the bottom"))
CAPTIONS_PER_IMAGE = 3
"""Per language."""
LANGUAGES = ("en", "zh", "both")

ZH_COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
ZH_BACKGROUNDS = {"white": "白色", "black": "黑色", "grey": "灰色"}
ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
ZH_SIZES = {"small": "小", "large": "大"}
ZH_POSITIONS = {"on the left": "左边", "on the right": "右边", "at the top": "上方", "at the bottom": "下方",
                "in the middle": "中间"}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str
    offset: tuple[float, float] = (0.0, 0.0)
    """A small shift from the named position, in fractions of the image: no two scenes are identical."""
    scale: float = 1.0
    shade: tuple[int, int, int] = (0, 0, 0)
    """Added to the colour's RGB: a red is never quite the same red twice."""

    def phrase(self, with_size: bool = True) -> str:
        return f"{article(self.size if with_size else self.colour)} {self.size + ' ' if with_size else ''}" \
               f"{self.colour} {self.kind} {self.position}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str

    def captions(self, language: str = "en") -> list[str]:
        """CAPTIONS_PER_IMAGE phrasings of the same scene in `language` ('en', 'zh'; 'both': English
        then Chinese)."""
        if language == "zh":
            return self.chinese_captions()
        if language == "both":
            return self.captions("en") + self.chinese_captions()
        if language != "en":
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
        if len(self.shapes) == 1:
            [shape] = self.shapes
            return [shape.phrase(),
                    f"{shape.phrase(with_size=False)} on a {self.background} background",
                    f"a picture of one {shape.colour} {shape.kind}, {shape.size}, {shape.position}"]
        first, second = self.shapes
        return [f"{first.phrase()} and {second.phrase()}",
                f"{second.phrase(with_size=False)} and {first.phrase(with_size=False)}",
                f"two shapes on {self.background}: {article(first.colour)} {first.colour} {first.kind} and "
                f"{article(second.colour)} {second.colour} {second.kind}"]

    def chinese_captions(self) -> list[str]:
        """The same three phrasings in Chinese: where a shape is comes first, as Chinese puts it."""
        background = ZH_BACKGROUNDS[self.background]
        if len(self.shapes) == 1:
            [shape] = self.shapes
            where, colour, kind = ZH_POSITIONS[shape.position], ZH_COLOURS[shape.colour], ZH_SHAPES[shape.kind]
            size = ZH_SIZES[shape.size]
            return [f"{where}有一个{size}的{colour}{kind}",
                    f"{background}背景上，{where}的{colour}{kind}",
                    f"图里只有一个{colour}的{kind}，{'很小' if shape.size == 'small' else '很大'}，在{where}"]
        first, second = self.shapes

        def named(shape: Shape) -> str:
            return f"{ZH_COLOURS[shape.colour]}{ZH_SHAPES[shape.kind]}"

        return [f"{ZH_POSITIONS[first.position]}有一个小的{named(first)}，"
                f"{ZH_POSITIONS[second.position]}有一个小的{named(second)}",
                f"{ZH_POSITIONS[second.position]}的{named(second)}和{ZH_POSITIONS[first.position]}的{named(first)}",
                f"{background}背景上的两个图形：{named(first)}和{named(second)}"]

    def render(self) -> Image.Image:
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for shape in self.shapes:
            centre_x, centre_y = ((fraction + shift) * SIZE
                                  for fraction, shift in zip(POSITIONS[shape.position], shape.offset, strict=True))
            radius = SIZES[shape.size] * SIZE / 2 * 1.4 * shape.scale
            box = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
            colour = tuple(min(255, max(0, base + shift))
                           for base, shift in zip(COLOURS[shape.colour], shape.shade, strict=True))
            if shape.kind == "circle":
                draw.ellipse(box, fill=colour)
            elif shape.kind == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(centre_x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
        return image


def random_scene(rng: np.random.Generator) -> Scene:
    def pick(options: tuple[str, ...] | list[str]) -> str:
        return str(options[int(rng.integers(len(options)))])

    def shape(kind: str, colour: str, size: str, position: str) -> Shape:
        offset = (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05)))
        shade = (int(rng.integers(-20, 21)), int(rng.integers(-20, 21)), int(rng.integers(-20, 21)))
        return Shape(kind, colour, size, position, offset, float(rng.uniform(0.85, 1.15)), shade)

    background = pick(list(BACKGROUNDS))
    if rng.random() < 1 / 3:
        positions = PAIRED_POSITIONS[int(rng.integers(len(PAIRED_POSITIONS)))]
        colours = rng.choice(list(COLOURS), size=2, replace=False)
        shapes = tuple(shape(pick(SHAPES), str(colour), "small", position)
                       for colour, position in zip(colours, positions, strict=True))
        return Scene(shapes, background)
    return Scene((shape(pick(SHAPES), pick(list(COLOURS)), pick(list(SIZES)), pick(list(POSITIONS))),), background)


def write_shapes_corpus(out: Path, count: int = 3000, seed: int = 0, language: str = "en") -> int:
    """Write `count` scenes as out/images/shape_NNNNN.png, each with its captions in `language` (LANGUAGES)
    in a .txt beside it."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for number in range(count):
        scene = random_scene(rng)
        path = images / f"shape_{number:05d}.png"
        scene.render().save(path)
        path.with_suffix(".txt").write_text("\n".join(scene.captions(language)) + "\n", encoding="utf-8")
    return count

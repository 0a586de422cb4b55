"""A synthetic corpus of text in pictures: words in English and Chinese on cluttered, photo-like backgrounds.

Every image is drawn from the seed alone, so the same (count, seed, language) gives the same files.
An image shows a phrase of two or three words: a key word that no other image of the corpus shows
(while the vocabulary lasts), then one or two common sign words ("sale", "open"; 营业, 优惠) that
many show. It is written in one of several fonts (DejaVu, Liberation and Noto CJK, from Debian's
`fonts-dejavu`, `fonts-liberation` and `fonts-noto-cjk`), at 20 to 44 pixels, in a colour that
stands out from what lies under it, on a background of soft gradients, blotches, lines and noise,
rotated up to 6°, and blurred a little. Some images carry a second, smaller line of other words.

`truth.jsonl` lists each image with what it shows (`lines`), its `key` word and its language:
what `bench.ocr` measures word recall, character error rate and "find the image that says X"
against. No caption or metadata sidecar is written, so that a search finds an image only by what
its pixels show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LANGUAGES = ("en", "zh", "both")
WIDTH, HEIGHT = 480, 320

_ENGLISH_KEYS = (
    "invoice receipt coffee bakery pharmacy museum station airport library garden theatre hospital "
    "bicycle parking exit entrance pizza noodles market ticket hotel harbour bridge castle tunnel "
    "cinema stadium school office police bank menu taxi subway bus platform gallery bookshop florist "
    "butcher dentist laundry barber cafe diner grocery kitchen studio warehouse factory garage "
    "elevator stairs restroom reception lobby terrace balcony rooftop basement chapel temple mosque "
    "church palace tower lighthouse island beach forest mountain river valley canyon desert glacier "
    "volcano meadow orchard vineyard farm stable kennel aquarium zoo circus carnival festival concert "
    "lecture seminar workshop meeting deadline birthday wedding holiday vacation summer winter autumn "
    "spring monday friday weekend morning evening midnight breakfast lunch dinner dessert chocolate "
    "vanilla lemon orange banana cherry tomato potato carrot onion pepper garlic ginger honey butter"
)
ENGLISH_KEYS = tuple(_ENGLISH_KEYS.split())
ENGLISH_COMMON = ("sale", "open", "today", "new", "free", "closed", "daily", "special", "welcome", "now")

_CHINESE_KEYS = (
    "发票 收据 咖啡 面包 药店 博物馆 车站 机场 图书馆 花园 剧院 医院 自行车 停车场 出口 入口 披萨 面条 市场 门票 "
    "酒店 港口 大桥 城堡 隧道 电影院 体育场 学校 办公室 警察 银行 菜单 出租车 地铁 公交 站台 画廊 书店 花店 肉店 "
    "牙医 洗衣 理发 餐厅 超市 厨房 工作室 仓库 工厂 车库 电梯 楼梯 洗手间 前台 大厅 露台 阳台 屋顶 地下室 寺庙 "
    "教堂 宫殿 灯塔 海岛 海滩 森林 高山 河流 山谷 峡谷 沙漠 冰川 火山 草地 果园 葡萄园 农场 马厩 水族馆 动物园 "
    "马戏团 嘉年华 节日 音乐会 讲座 研讨会 会议 生日 婚礼 假期 夏天 冬天 秋天 春天 星期一 星期五 周末 早上 晚上 午夜 "
    "早餐 午餐 晚餐 甜点 巧克力 香草 柠檬 橙子 香蕉 樱桃 番茄 土豆 胡萝卜 洋葱 辣椒 大蒜 生姜 蜂蜜 黄油 茶叶"
)
CHINESE_KEYS = tuple(_CHINESE_KEYS.split())
CHINESE_COMMON = ("营业", "优惠", "今天", "新品", "免费", "欢迎", "特价", "每日", "开业", "现在")

FONT_FOLDERS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"),
                Path("/usr/share/fonts/opentype/noto"))
LATIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf",
               "LiberationSans-Regular.ttf", "LiberationSerif-Regular.ttf", "LiberationSans-Bold.ttf",
               "NotoSansCJK-Regular.ttc")
CJK_FONTS = ("NotoSansCJK-Regular.ttc", "NotoSansCJK-Bold.ttc", "NotoSerifCJK-Regular.ttc")


@dataclass(frozen=True)
class Sign:
    """One image: what it says and how it is drawn."""

    language: str
    key: str
    lines: tuple[str, ...]
    font: str
    size: int
    angle: float
    blur: float
    seed: int

    def render(self) -> Image.Image:
        rng = np.random.default_rng(self.seed)
        image = _background(rng)
        text_layer = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
        draw = ImageDraw.Draw(text_layer)
        y = int(rng.integers(40, 110))
        for number, line in enumerate(self.lines):
            size = self.size if number == 0 else max(18, int(self.size * 0.7))
            font = ImageFont.truetype(str(font_path(self.font)), size)
            left, top, right, bottom = (int(value) for value in draw.textbbox((0, 0), line, font=font))
            x = int(rng.integers(16, max(17, WIDTH - (right - left) - 16)))
            under = np.asarray(image.crop((x, y, min(WIDTH, x + right - left), min(HEIGHT, y + bottom))))
            draw.text((x - left, y - top), line, font=font, fill=_standing_out(under, rng))
            y += (bottom - top) + int(rng.integers(18, 40))
        text_layer = text_layer.rotate(self.angle, resample=Image.Resampling.BICUBIC, center=(WIDTH / 2, HEIGHT / 2))
        image = Image.alpha_composite(image.convert("RGBA"), text_layer).convert("RGB")
        return image.filter(ImageFilter.GaussianBlur(self.blur)) if self.blur > 0 else image

    def record(self, path: str) -> dict[str, object]:
        return {"image": path, "language": self.language, "key": self.key, "lines": list(self.lines),
                "font": self.font, "size": self.size}


def font_path(name: str) -> Path:
    for folder in FONT_FOLDERS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"font {name} not found in {', '.join(map(str, FONT_FOLDERS))}: install Debian's "
                            "fonts-dejavu, fonts-liberation and fonts-noto-cjk")


def available_fonts(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in names if any((folder / name).is_file() for folder in FONT_FOLDERS))


def signs(count: int, seed: int = 0, language: str = "both") -> list[Sign]:
    """`count` signs: English, Chinese, or the two alternating ("both"). Key words are each used once
    per language until its vocabulary runs out, then again (a key is then shown by several images)."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
    rng = np.random.default_rng(seed)
    orders = {"en": rng.permutation(len(ENGLISH_KEYS)), "zh": rng.permutation(len(CHINESE_KEYS))}
    used = {"en": 0, "zh": 0}
    fonts = {"en": available_fonts(LATIN_FONTS), "zh": available_fonts(CJK_FONTS)}
    made = []
    for number in range(count):
        tongue = language if language != "both" else ("en", "zh")[number % 2]
        keys, common = (ENGLISH_KEYS, ENGLISH_COMMON) if tongue == "en" else (CHINESE_KEYS, CHINESE_COMMON)
        key = keys[orders[tongue][used[tongue] % len(keys)]]
        used[tongue] += 1
        extra = [str(word) for word in rng.choice(common, size=int(rng.integers(1, 3)), replace=False)]
        joiner = " " if tongue == "en" else ""
        words = [key, *extra] if rng.random() < 0.7 else [*extra, key]
        lines = [joiner.join(words)]
        if rng.random() < 0.3:
            lines.append(joiner.join(str(word) for word in rng.choice(common, size=2, replace=False)))
        if not fonts[tongue]:
            raise FileNotFoundError("no fonts for the signs: install Debian's fonts-dejavu and fonts-noto-cjk")
        made.append(Sign(language=tongue, key=key, lines=tuple(lines), font=str(rng.choice(fonts[tongue])),
                         size=int(rng.integers(20, 45)), angle=float(rng.uniform(-6, 6)),
                         blur=float(rng.choice([0.0, 0.4, 0.8])), seed=int(rng.integers(2**31))))
    return made


def write_signs_corpus(out: Path, count: int = 200, seed: int = 0, language: str = "both") -> int:
    """Render `count` signs into out/images/ with out/truth.jsonl; returns how many."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for number, sign in enumerate(signs(count, seed, language)):
        path = images / f"sign-{number:05d}.jpg"
        sign.render().save(path, quality=90)
        records.append(sign.record(str(path.relative_to(out))))
    (out / "truth.jsonl").write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
                                     encoding="utf-8")
    return len(records)


def _background(rng: np.random.Generator) -> Image.Image:
    """Soft gradients, blotches and lines with sensor noise: something like a photo of a wall or a shop."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = rng.uniform(40, 215, size=3)
    tilt = rng.uniform(-60, 60, size=(2, 3))
    pixels = base + x[..., None] / WIDTH * tilt[0] + y[..., None] / HEIGHT * tilt[1]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(15, 90)
        colour = tuple(int(value) for value in rng.integers(0, 256, size=3))
        draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=colour)
    for _ in range(int(rng.integers(2, 6))):
        angle = rng.uniform(0, math.pi)
        cx, cy, length = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(60, 300)
        end = (cx + length * math.cos(angle), cy + length * math.sin(angle))
        draw.line(((cx, cy), end), fill=tuple(int(value) for value in rng.integers(0, 256, size=3)),
                  width=int(rng.integers(1, 5)))
    image = image.filter(ImageFilter.GaussianBlur(3))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, size=(HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _standing_out(under: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A text colour far from the mean of what lies under it: dark on light, light on dark."""
    light = float(under.mean()) > 128 if under.size else True
    shade = int(rng.integers(0, 50)) if light else int(rng.integers(210, 256))
    tint = rng.integers(-20, 21, size=3)
    return (*(int(np.clip(shade + value, 0, 255)) for value in tint), 255)  # type: ignore[return-value]

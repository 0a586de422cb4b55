"""`python -m indexer demo-data`: a small demo corpus, either the public-domain / CC0 sample photos
that scikit-image ships, with captions, or rendered shapes (indexer.shapes)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from indexer.common import Commands, Fail, positive_int
from indexer.shapes import LANGUAGES, write_shapes_corpus
from indexer.signs import write_signs_corpus

# (scikit-image function, file name, caption, licence as scikit-image documents it)
SAMPLES = [
    ("astronaut", "astronaut.jpg", "an astronaut in a white spacesuit posing in front of an american flag",
     "public domain (NASA)"),
    ("camera", "cameraman.png", "a black and white photo of a man with a film camera on a tripod", "CC0"),
    ("chelsea", "cat.jpg", "a tabby cat looking to the side", "CC0"),
    ("coffee", "coffee.jpg", "a cup of coffee on a saucer seen from above", "CC0"),
    ("rocket", "rocket.jpg", "a rocket on the launch pad under a blue sky", "public domain (SpaceX)"),
    ("hubble_deep_field", "deep_field.jpg", "thousands of distant galaxies in the night sky", "public domain (NASA)"),
    ("horse", "horse.png", "the silhouette of a horse", "CC0"),
    ("coins", "coins.png", "old coins lying on a dark background", "no known copyright restrictions"),
    ("brick", "brick.png", "a red brick wall texture", "CC0"),
    ("grass", "grass.png", "a close-up of green grass", "CC0"),
    ("gravel", "gravel.png", "grey gravel stones on the ground", "CC0"),
    ("text", "text.png", "printed handwritten text on paper", "public domain"),
    ("cell", "cell.png", "a microscope image of a cell", "CC0"),
    ("retina", "retina.jpg", "a photograph of the retina of a human eye", "CC0"),
    ("microaneurysms", "microaneurysms.png", "a grayscale close-up of blood vessels in the eye", "CC0"),
]

DEMO_CHECKPOINT = Path(__file__).parent / "demo_weights" / "tiny-multilingual-shapes.pt"
"""The offline demo's model: tiny-multilingual fine-tuned on 3,200 bilingual shapes scenes (seed 0) by
scripts/make-demo-checkpoint, so the demo serves in seconds instead of training for minutes."""

EXTRA_TEXTS = [
    "a pet sleeping on the sofa",
    "a spacecraft launching into orbit",
    "a hot drink on a cafe table",
    "stars and galaxies far away",
    "a farm animal in a field",
    "money and loose change",
    "a wall made of stone",
    "a photographer at work",
    "medical imaging of the human body",
    "a page from an old book",
]


def write_demo_corpus(out: Path) -> tuple[int, int]:
    """Write images/ (each with a .txt caption and .json licence) and texts.txt under `out`."""
    from PIL import Image
    from skimage import data

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for function, name, caption, licence in SAMPLES:
        path = images / name
        Image.fromarray(getattr(data, function)()).save(path, quality=92)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps({"source": f"scikit-image data.{function}",
                                                         "licence": licence}), encoding="utf-8")
    texts = [caption for _, _, caption, _ in SAMPLES] + EXTRA_TEXTS
    (out / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return len(SAMPLES), len(texts)


def add_parser(commands: Commands) -> None:
    command = commands.add_parser("demo-data", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                  help="write a demo corpus: public-domain photos (needs scikit-image), rendered "
                                       "shapes with captions, or rendered signs (words in pictures, for OCR)")
    command.add_argument("--out", type=Path, required=True, help="folder to write images/ (and texts.txt) into")
    command.add_argument("--kind", choices=["photos", "shapes", "signs"], default="photos",
                         help="photos: scikit-image's sample photos and captions; shapes: generated scenes of coloured "
                              "shapes, three captions each (a paired corpus for eval and finetune); signs: English "
                              "and Chinese words on cluttered backgrounds with truth.jsonl (for --ocr and bench.ocr)")
    command.add_argument("--count", type=positive_int, default=3000, help="scenes or signs to render")
    command.add_argument("--seed", type=int, default=0, help="the scenes or signs follow from it")
    command.add_argument("--language", choices=LANGUAGES, default="en",
                         help="the captions' language (shapes) or the signs' (both alternates them): English, "
                              "Chinese, or both; the scenes are the same whichever")
    command.add_argument("--checkpoint", type=Path, default=None,
                         help="also write here the shipped tiny-multilingual checkpoint fine-tuned on the shapes "
                              "(use it with --model tiny-multilingual --checkpoint)")


def check(args: argparse.Namespace, fail: Fail) -> None:
    if args.checkpoint is not None and args.kind != "shapes":
        fail("--checkpoint comes with the shapes: add --kind shapes")


def run(args: argparse.Namespace) -> int:
    if args.kind == "signs":
        count = write_signs_corpus(args.out, args.count, args.seed, args.language)
        print(f"wrote {count} signs to {args.out / 'images'}, what each shows in {args.out / 'truth.jsonl'}")
        return 0
    if args.kind == "shapes":
        count = write_shapes_corpus(args.out, args.count, args.seed, args.language)
        print(f"wrote {count} scenes with captions to {args.out / 'images'}")
        if args.checkpoint is not None:
            args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DEMO_CHECKPOINT, args.checkpoint)
            print(f"wrote the demo's fine-tuned tiny-multilingual model to {args.checkpoint}")
        return 0
    images, texts = write_demo_corpus(args.out)
    print(f"wrote {images} images with captions and {texts} texts to {args.out}")
    return 0

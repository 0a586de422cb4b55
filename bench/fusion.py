"""Retrieval quality of fused and hybrid search, on shapes whose captions name only part of a scene.

    python -m bench.fusion --checkpoint /tmp/demo-shapes/tiny-shapes.pt --scenes 1000 --validation 500
    python -m bench.fusion --checkpoint /tmp/demo-shapes/tiny-shapes.pt --captions where
    python -m bench.fusion --checkpoint /tmp/demo-shapes/tiny-shapes.pt --captions colour --videos

Renders two sets of shapes scenes (indexer.shapes) the checkpoint never saw: a validation set
(seed 8) and a test set (seed 7). Each image item gets a caption that names only part of its
scene; one image in five has none. With `--captions some` (the default) the part is drawn at
random: its colours and kinds but not where they are ("a red circle"), its position only
("something on the left"), or its kinds and size ("a small square"). With `--captions where`
it is always the position and size ("something small on the left"): what the model's image tower
resolves worst (docs/quality.md). With `--captions colour` the images are stored in greyscale and
the caption names each shape's colour and kind ("a red circle"): the pixels lose what the caption
keeps, as a photo's caption names who or where, which its pixels cannot show. The queries are
each scene's three full captions ("a small red circle on the left"). Each set is built into a
fused bundle (--fuse), and text → image R@1/5/10 are measured as searches rank the images:

* the image alone (fusion image=1), the caption alone, and average fusion (0.5 / 0.5);
* weighted fusion at the caption weight that did best on the validation set (R@5, then R@1);
* keyword search (BM25 over the item captions) and hybrid search: RRF of keyword with the image
  alone and with the best fusion, at even weights and at the vector weight that did best on the
  validation set.

With `--videos` each scene is a video instead, of two one-second shots: the scene, and a scene of
another set (a cut away; greyscale too with `--captions colour`), captioned as its image would be.
A video scores by its best shot (the image tower's) and, fused, its caption: the same
configurations are measured text → video (`--videos` needs the `video` extra, for PyAV).

Prints one JSON line per configuration with its R@k on the test set. The checkpoint is the tiny
model fine-tuned on shapes (docs/quality.md: `indexer finetune ... --out tiny-shapes.pt`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import emit
from clipsearch.config import OFFLINE_MODEL, QueryLimits
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import RECALL_AT, PairedCorpus, RetrievalScores, read_pairs, search_ranks
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import load_bundle
from indexer.shapes import Scene, article, random_scene, write_shapes_corpus

CAPTION_WEIGHTS = [round(0.1 * step, 1) for step in range(1, 10)]
VECTOR_WEIGHTS = [0.5, 0.6, 0.7, 0.8, 0.9]
UNCAPTIONED_SHARE = 0.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the tiny model fine-tuned on shapes (without it: random weights, meaningless figures)")
    parser.add_argument("--scenes", type=int, default=1000, help="test scenes")
    parser.add_argument("--validation", type=int, default=500, help="validation scenes (choose the weights)")
    parser.add_argument("--captions", choices=["some", "where", "colour"], default="some",
                        help="what the item captions name: a random part of the scene; where and how big; or the "
                             "colours of greyscale images")
    parser.add_argument("--videos", action="store_true",
                        help="each scene as a two-shot video (the scene, then another set's), searched as videos")
    return parser.parse_args(argv)


def partial_caption(scene: Scene, rng: np.random.Generator, captions: str) -> str | None:
    """A caption naming only part of `scene`, or none (UNCAPTIONED_SHARE of scenes)."""
    if rng.random() < UNCAPTIONED_SHARE:
        return None
    if captions == "colour":
        return " and ".join(f"{article(shape.colour)} {shape.colour} {shape.kind}" for shape in scene.shapes)
    if captions == "where":
        if len(scene.shapes) == 2:
            return f"two small shapes, {scene.shapes[0].position} and {scene.shapes[1].position}"
        return f"something {scene.shapes[0].size} {scene.shapes[0].position}"
    kind = int(rng.integers(3))
    if len(scene.shapes) == 2:
        first, second = scene.shapes
        return [f"{article(first.colour)} {first.colour} {first.kind} and {article(second.colour)} {second.colour} "
                f"{second.kind}", f"two shapes, {first.position} and {second.position}",
                f"two small shapes: {first.kind} and {second.kind}"][kind]
    [shape] = scene.shapes
    return [f"{article(shape.colour)} {shape.colour} {shape.kind}", f"something {shape.position}",
            f"{article(shape.size)} {shape.size} {shape.kind}"][kind]


def make_set(folder: Path, count: int, seed: int, checkpoint: Path | None, kind: str,
             videos: bool = False) -> tuple[PairedCorpus, Path]:
    """Render `count` scenes, give each image (or a video of it) a partial caption, and build them into
    a fused bundle."""
    write_shapes_corpus(folder, count, seed)
    scenes, captions = np.random.default_rng(seed), np.random.default_rng(seed + 1000)
    cut_aways = np.random.default_rng(seed + 5000)
    rows = []
    for number in range(count):
        caption = partial_caption(random_scene(scenes), captions, kind)
        image = folder / "images" / f"shape_{number:05d}.png"
        if kind == "colour":
            Image.open(image).convert("L").convert("RGB").save(image)
        if videos:
            video = folder / "videos" / f"shape_{number:05d}.mp4"
            cut_away = random_scene(cut_aways).render()
            write_shots(video, [Image.open(image), cut_away.convert("L").convert("RGB") if kind == "colour"
                                else cut_away])
            if caption is not None:
                video.with_suffix(".txt").write_text(caption)
        rows.append({"image": str(image),
                     **({"caption": caption} if caption is not None else {})})
    manifest = folder / "items.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    bundle = folder / "bundle"
    build(BuildConfig(out=bundle, images=None if videos else manifest, videos=folder / "videos" if videos else None,
                      model=OFFLINE_MODEL, pretrained=None, checkpoint=checkpoint, device="cpu", backend="torch",
                      batch_size=64, workers=0, progress=False, fuse=Fusion(0.5, 0.5)))
    return read_pairs(folder / "images"), bundle


def write_shots(path: Path, shots: list[Image.Image], seconds: float = 1.0, fps: int = 4) -> None:
    """An H.264 video of `shots`, each held still for `seconds`."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = shots[0].width, shots[0].height, "yuv420p"
        for shot in shots:
            frame = av.VideoFrame.from_ndarray(np.asarray(shot.convert("RGB")), format="rgb24")
            for _ in range(round(seconds * fps)):
                for packet in stream.encode(frame):
                    output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


def scores(corpus: PairedCorpus, service: SearchService, fusion: Fusion | None, mode: SearchMode,
           vector_weight: float = 0.5, videos: bool = False) -> dict[str, float]:
    """R@k of text → image (or, with `videos`, text → video: a video found stands for its scene's image)."""
    options, ranking = ResultOptions(fusion=fusion), Ranking(mode, vector_weight=vector_weight)
    target = Modality.VIDEO if videos else Modality.IMAGE
    image_of = {Path(image.uri).stem: image.uri for image in corpus.images}
    ranks = search_ranks(corpus, lambda caption, k: [image_of[Path(hit.item.uri).stem] if videos else hit.item.uri
                                                     for hit in service.search_text(caption, target, k, options=options,
                                                                                    ranking=ranking).hits],
                         progress=False)
    measured = RetrievalScores.of_ranks(ranks, None, images=len(corpus.images), complete=False)
    return {f"R@{k}": round(measured.text_to_image[k], 4) for k in RECALL_AT}


def open_service(encoder: ClipEncoder, bundle: Path) -> SearchService:
    return SearchService(encoder, load_bundle(bundle), QueryLimits(max_k=max(RECALL_AT)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    encoder = load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=args.checkpoint, device="cpu", backend="torch")
    with tempfile.TemporaryDirectory() as scratch:
        validation_corpus, validation_bundle = make_set(Path(scratch) / "validation", args.validation, 8,
                                                        args.checkpoint, args.captions, args.videos)
        test_corpus, test_bundle = make_set(Path(scratch) / "test", args.scenes, 7, args.checkpoint, args.captions,
                                            args.videos)
        emit("sets", captions=args.captions, items="videos" if args.videos else "images",
             validation_images=len(validation_corpus.images),
             test_images=len(test_corpus.images), test_queries=len(test_corpus.captions),
             uncaptioned_share=UNCAPTIONED_SHARE)
        validation = open_service(encoder, validation_bundle)
        swept = {weight: scores(validation_corpus, validation, Fusion(1 - weight, weight), SearchMode.VECTOR,
                                videos=args.videos) for weight in CAPTION_WEIGHTS}
        best = max(CAPTION_WEIGHTS, key=lambda weight: (swept[weight]["R@5"], swept[weight]["R@1"]))
        chosen = Fusion(1 - best, best)
        hybrid = {weight: scores(validation_corpus, validation, chosen, SearchMode.HYBRID, weight, args.videos)
                  for weight in VECTOR_WEIGHTS}
        best_vector = max(VECTOR_WEIGHTS, key=lambda weight: (hybrid[weight]["R@5"], hybrid[weight]["R@1"]))
        validation.close()
        emit("validation sweep", caption_weights={str(weight): swept[weight] for weight in CAPTION_WEIGHTS},
             best_caption_weight=best, hybrid_vector_weights={str(weight): hybrid[weight] for weight in VECTOR_WEIGHTS},
             best_vector_weight=best_vector)
        test = open_service(encoder, test_bundle)
        if args.videos:  # a cut away too like its scene is not told apart from it: one segment, not two
            emit("test videos", videos=len(test_corpus.images),
                 segments=int(test.bundle.indices[Modality.VIDEO].ntotal))
        for name, fusion, mode, vector_weight in [
                ("image alone", Fusion(1, 0), SearchMode.VECTOR, 0.5),
                ("caption alone", Fusion(0, 1), SearchMode.VECTOR, 0.5),
                ("average fusion", Fusion(0.5, 0.5), SearchMode.VECTOR, 0.5),
                (f"weighted fusion (caption {best})", chosen, SearchMode.VECTOR, 0.5),
                ("keyword", None, SearchMode.KEYWORD, 0.5),
                ("hybrid: keyword + image alone", Fusion(1, 0), SearchMode.HYBRID, 0.5),
                (f"hybrid: keyword + weighted fusion (caption {best})", chosen, SearchMode.HYBRID, 0.5),
                (f"hybrid: keyword + weighted fusion, vector weight {best_vector}", chosen, SearchMode.HYBRID,
                 best_vector)]:
            emit("test text → video" if args.videos else "test text → image", configuration=name,
                 **scores(test_corpus, test, fusion, mode, vector_weight, args.videos))
        test.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Text in images: how well PP-OCR reads the rendered signs, whether "find the image that says X" works,
and what reading costs a build, all in one run.

    python -m bench.ocr --count 100 --workers 2

Renders `--count` English and `--count` Chinese signs (indexer.signs: two or three words on cluttered,
photo-like backgrounds, 20–44 px, rotated up to 6°, some blurred; seed `--seed`), then:

* **reading**, at the default settings and at the others of SETTINGS (one reader, `--threads`
  threads): per language, word recall (the read text holds the word, case aside), separate-word
  recall (held as a word, in the text or a line's `spaced` form: what keyword search finds), the
  character error rate (whitespace aside) and seconds per image;
* **"says X"**: the corpus built three times with `indexer build`'s code (`--model`, random weights
  by default: the keyword figures do not depend on the model): with `--ocr`, without, and with
  `--ocr --fuse image=0.5,ocr=0.5` (the read text's vector as a part of item fusion). Each sign's
  key word (shown by no other sign) is a query; R@1 and R@5 of finding its sign, per language, by
  keyword, hybrid (RRF of keyword and vector) and vector search, and in the fused bundle by fused
  vector search at its weights and at the read text's alone, and hybrid over the fused ranking;
* **cost**: the first two builds' images per second (`--workers` loader processes, each with a reader of
  `--ocr-threads` threads), and the ratio. Each build loads the model again (from the cache warmed
  before them) and writes its bundle: the figures are whole builds, end to end.

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import emit, ratio
from clipsearch.config import OFFLINE_MODEL, OcrConfig, QueryLimits
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.model.ocr import load_reader
from clipsearch.quality.reading import Truth, read_all, read_truth, score_reading
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import load_bundle
from indexer.signs import write_signs_corpus

SETTINGS = {
    "default": OcrConfig(),
    "detection_side=480": OcrConfig(detection_side=480),
    "detection_side=960": OcrConfig(detection_side=960),
    "recognition_min_score=0.8": OcrConfig(recognition_min_score=0.8),
}
"""The default (PP-OCR's and Immich's detection side, RapidOCR's minimum scores), a smaller and a
larger detection side, and Immich's stricter recognition minimum."""
DEPTH = 5
FUSED = Fusion(0.5, None, 0.5)
"""The fused build's weights: the picture and the read text, even."""
READ_TEXT_ALONE = Fusion.of({"ocr": 1})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="signs per language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=list(SETTINGS),
                        help="the reading settings measured (none: only the builds and searches)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the reading figures' reader")
    parser.add_argument("--model", default=OFFLINE_MODEL)
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--workers", type=int, default=2, help="the builds' loader processes")
    parser.add_argument("--ocr-threads", type=int, default=1, help="threads of each loader process's reader")
    parser.add_argument("--work", type=Path, default=None, help="where the corpus and bundles go (default: a "
                                                                 "temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        write_signs_corpus(work / "signs", 2 * args.count, args.seed, "both")
        truths = read_truth(work / "signs")
        for name in args.settings:
            _reading(name, replace(SETTINGS[name], threads=args.threads), truths)
        started = time.perf_counter()
        # Loaded once before the builds are timed: the first load of a model on ONNX Runtime exports
        # it (cached), which would otherwise land in whichever build ran first.
        load_encoder(args.model, args.pretrained, device="cpu")
        emit("model_load", model=args.model, seconds=time.perf_counter() - started)
        elapsed = {}
        for with_ocr in (False, True):
            out = work / ("bundle-ocr" if with_ocr else "bundle")
            config = BuildConfig(out=out, images=work / "signs" / "images", model=args.model,
                                 pretrained=args.pretrained, device="cpu", workers=args.workers, progress=False,
                                 ocr=OcrConfig(threads=args.ocr_threads) if with_ocr else None)
            started = time.perf_counter()
            build(config)
            elapsed[with_ocr] = time.perf_counter() - started
            emit("build", ocr=with_ocr, images=len(truths), seconds=elapsed[with_ocr],
                 images_per_s=len(truths) / elapsed[with_ocr], workers=args.workers)
            _says(out, with_ocr, truths, args)
        emit("ocr_cost", images_per_s_ratio=ratio(elapsed[False], elapsed[True]),
             note="images/s with OCR over images/s without, same run")
        fused = work / "bundle-ocr-fused"
        build(BuildConfig(out=fused, images=work / "signs" / "images", model=args.model, pretrained=args.pretrained,
                          device="cpu", workers=args.workers, progress=False, ocr=OcrConfig(threads=args.ocr_threads),
                          fuse=FUSED))
        _says(fused, True, truths, args)
    return 0


def _reading(name: str, config: OcrConfig, truths: list[Truth]) -> None:
    reader = load_reader(config)
    found = read_all(truths, reader.read, progress=False, description=f"reading ({name})")
    for language in ("en", "zh"):
        chosen = [number for number, truth in enumerate(truths) if truth.language == language]
        scores = score_reading([truths[number] for number in chosen], [found[number] for number in chosen])
        emit("reading", settings=name, language=language, engine=reader.description, **scores.as_dict())
    reader.close()


def _says(out: Path, with_ocr: bool, truths: list[Truth], args: argparse.Namespace) -> None:
    encoder = load_encoder(args.model, args.pretrained, device="cpu")
    bundle = load_bundle(out)
    service = SearchService(encoder, bundle, QueryLimits(max_k=50))
    stored = bundle.fusion
    searches = [(SearchMode.HYBRID, None), (SearchMode.VECTOR, None), (SearchMode.VECTOR, READ_TEXT_ALONE)] \
        if stored is not None else [(SearchMode.KEYWORD, None), (SearchMode.HYBRID, None), (SearchMode.VECTOR, None)]
    try:
        for mode, fusion in searches:
            options = ResultOptions(fusion=fusion)
            for language in ("en", "zh"):
                ranks = []
                for truth in (truth for truth in truths if truth.language == language):
                    hits = service.search_text(truth.key, Modality.IMAGE, DEPTH, options=options,
                                               ranking=Ranking(mode)).hits
                    names = [Path(hit.item.uri).name for hit in hits]
                    ranks.append(names.index(truth.path.name) if truth.path.name in names else DEPTH)
                weights = None if stored is None else (fusion or stored).as_dict()
                emit("says", ocr=with_ocr, fusion=weights, mode=mode.value, language=language, queries=len(ranks),
                     r_at_1=sum(rank < 1 for rank in ranks) / len(ranks),
                     r_at_5=sum(rank < 5 for rank in ranks) / len(ranks), model=args.model)
    finally:
        service.close()
        bundle.close()


if __name__ == "__main__":
    sys.exit(main())

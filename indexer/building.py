"""`python -m indexer build`: read the corpora, embed them and write a bundle (resumable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsearch.config import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    GENERATION_TYPES,
    CaptionConfig,
    OcrConfig,
)
from clipsearch.errors import ClipSearchError, ModelLoadError
from clipsearch.ingest.build import build, is_up_to_date
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.distributed import ENGINES
from clipsearch.ingest.shards import work_dir_for
from clipsearch.ingest.sources import Columns
from clipsearch.model.captions import OFFLINE_CAPTION_MODEL
from clipsearch.store.manifest import read_manifest
from clipsearch.store.segments import MAX_SEGMENTS
from indexer.common import (
    DEFAULTS,
    Commands,
    Fail,
    add_audio_arguments,
    add_collection_arguments,
    add_image_arguments,
    add_model_arguments,
    add_speed_arguments,
    add_video_arguments,
    audio_sampling,
    check_weights,
    describe_error,
    fusion_weights,
    positive_int,
    pretrained_of,
    resolve_collection,
    video_sampling,
)

CAPTIONS = CaptionConfig()
OCR = OcrConfig()


def add_parser(commands: Commands) -> None:
    command = commands.add_parser("build", help="build (or resume building) a bundle",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--images", type=Path,
                         help="a folder of images (searched recursively; name.txt / name.json beside an image "
                              "are its caption / metadata) or a CSV, JSONL or Parquet manifest with an image column")
    command.add_argument("--texts", type=Path,
                         help="a text corpus: .txt (one text per line), or JSONL / CSV with a text column")
    add_video_arguments(command)
    add_audio_arguments(command)
    command.add_argument("--out", type=Path, default=None,
                         help="the bundle directory to write (an existing bundle there is replaced when done)")
    add_collection_arguments(command, "out")
    add_model_arguments(command, DEFAULTS.model)
    add_speed_arguments(command)
    command.add_argument("--index-factory", default=None,
                         help="a FAISS index factory string (e.g. 'IVF4096,Flat' or 'HNSW32'); by default exact "
                              "'Flat' up to --flat-threshold items, IVF above")
    command.add_argument("--flat-threshold", type=positive_int, default=DEFAULTS.flat_threshold,
                         help="largest corpus indexed exactly when no --index-factory is given")
    command.add_argument("--on-disk-threshold", type=positive_int, default=DEFAULTS.on_disk_threshold,
                         help="largest corpus whose IVF index holds whole vectors when no --index-factory is given; "
                              "past it, IVF-PQ with its lists on disk (as any 'IVF…,PQ…' --index-factory is)")
    command.add_argument("--rerank", type=positive_int, default=DEFAULTS.rerank,
                         help="for an on-disk IVF-PQ index: candidates per result re-ranked exactly from the fp16 "
                              "vectors stored beside it (1: no re-rank)")
    command.add_argument("--keep-duplicates", action="store_true",
                         help="index files with identical content once each (default: only the first)")
    command.add_argument("--fuse", type=fusion_weights, default=None,
                         help="store the vectors of each image's caption and/or read text (ocr, with --ocr), and "
                              "each video's caption, and search each image (video: its best segment) by its "
                              "picture and those texts, weighted (e.g. "
                              "'image=0.7,caption=0.3' or 'image=0.6,caption=0.2,ocr=0.2'; equal weights: "
                              "average fusion)")
    command.add_argument("--keyword-fields", type=_field_names, default=(),
                         help="metadata fields searched by keyword besides captions and texts, comma-separated "
                              "(e.g. 'title,tags,place')")
    command.add_argument("--discard-live-changes", action="store_true",
                         help="replace a bundle that holds live changes (items added, edited or deleted over "
                              "HTTP since it was built), dropping them; without it such a rebuild is refused")
    command.add_argument("--batches-per-shard", type=positive_int, default=DEFAULTS.batches_per_shard,
                         help="batches written per resumable shard")
    command.add_argument("--engine", choices=ENGINES, default=DEFAULTS.engine,
                         help="what embeds the items: this process ('local'), or Ray Data on this machine or a "
                              "cluster ('ray', the [ray] extra: one model per actor, a GPU each where there are any)")
    command.add_argument("--ray-address", default=DEFAULTS.ray_address,
                         help="the Ray cluster for --engine ray (default: RAY_ADDRESS, else a Ray instance started "
                              "on this machine)")
    command.add_argument("--ray-actors", type=positive_int, default=DEFAULTS.ray_actors,
                         help="embedding actors for --engine ray (default: one per GPU of the cluster, else 1)")
    add_image_arguments(command)
    command.add_argument("--text-column", default=DEFAULTS.columns.text,
                         help="text column of a JSONL / CSV text corpus")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument("--if-changed", action="store_true",
                         help="do nothing when the bundle at --out was built from the same files and settings")
    command.add_argument("--caption-model", default=None,
                         help=f"generate captions for images that have none with this open_clip CoCa model (e.g. "
                              f"{DEFAULT_CAPTION_MODEL}; {OFFLINE_CAPTION_MODEL!r} is tiny and random); needs the "
                              "[caption] extra")
    command.add_argument("--caption-pretrained", default=None,
                         help=f"its pretrained tag (default {DEFAULT_CAPTION_PRETRAINED} for {DEFAULT_CAPTION_MODEL}, "
                              "none for other models)")
    command.add_argument("--caption-checkpoint", type=Path, default=None, help="a local checkpoint for it instead")
    command.add_argument("--caption-generation", choices=GENERATION_TYPES, default=CAPTIONS.generation,
                         help="how captions are decoded")
    command.add_argument("--caption-max-tokens", type=positive_int, default=CAPTIONS.max_tokens,
                         help="longest caption, in tokens")
    command.add_argument("--caption-batch-size", type=positive_int, default=CAPTIONS.batch_size,
                         help="images captioned per generation call")
    _add_ocr_arguments(command)


def _add_ocr_arguments(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group("text in images (the [ocr] extra: PP-OCR on ONNX Runtime)")
    group.add_argument("--ocr", action="store_true",
                       help="read the text in every image, searched by keyword and hybrid search and by filters on "
                            "ocr_text; `sync` and images added over HTTP are read too")
    group.add_argument("--ocr-detection-side", type=positive_int, default=OCR.detection_side,
                       help="an image's shorter side is scaled up to this for text detection (larger finds smaller "
                            "print, slower)")
    group.add_argument("--ocr-max-side", type=positive_int, default=OCR.max_side,
                       help="a larger image is scaled down to this longest side before its text is read")
    group.add_argument("--ocr-detection-min-score", type=float, default=OCR.detection_min_score,
                       help="text boxes detected below this score are dropped")
    group.add_argument("--ocr-recognition-min-score", type=float, default=OCR.recognition_min_score,
                       help="lines recognised below this confidence are dropped")
    for stage in ("detection", "recognition", "classifier"):
        group.add_argument(f"--ocr-{stage}-model", type=Path, default=None,
                           help=f"an ONNX {stage} model in place of the shipped PP-OCRv4 mobile one (e.g. PP-OCRv5)")
    group.add_argument("--ocr-threads", type=positive_int, default=OCR.threads,
                       help="ONNX Runtime threads per OCR reader (one reader per --workers process)")
    group.add_argument("--ocr-timeout-s", type=float, default=OCR.timeout_s,
                       help="an image whose text is not read within this long is indexed without it, and reported")


def check(args: argparse.Namespace, fail: Fail) -> None:
    resolve_collection(args, "out", fail)
    check_weights(args, fail)
    if args.images is None and args.texts is None and args.videos is None and args.audio is None:
        fail("give --images, --texts, --videos, --audio or several of them")
    if args.video_sound and args.videos is None:
        fail("--video-sound indexes the sound tracks of videos: give --videos")
    if args.video_max_segments > MAX_SEGMENTS:
        fail(f"--video-max-segments: at most {MAX_SEGMENTS}")
    ocr = _ocr_config(args)
    if ocr is not None:
        try:
            ocr.check()
        except ModelLoadError as error:
            fail(f"--{(error.field or 'ocr').replace('_', '-')}: {error.reason}")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        if args.if_changed and _up_to_date(config):
            print(f"{config.out} is up to date with its corpus and settings; nothing to do")
            return 0
        summary = build(config)
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        print(f"(finished shards, if any, are kept in {work_dir_for(config.out)} for a rerun)", file=sys.stderr)
        return 2
    print(summary.describe())
    for kind, label in (("skipped", "skipped"), ("text_unread", "text not read in")):
        entries = summary.report.get(kind, [])
        for entry in entries[:20]:
            print(f"  {label} {entry['uri']}: {entry['reason']}")
        if len(entries) > 20:
            print(f"  … and {len(entries) - 20} more, listed in {config.out / 'report.json'}")
    return 0


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        out=args.out, images=args.images, texts=args.texts, videos=args.videos, video=video_sampling(args),
        audio=args.audio, sound=audio_sampling(args),
        model=args.model, pretrained=pretrained_of(args),
        checkpoint=args.checkpoint, text_language=args.text_language, device=args.device, backend=args.backend,
        onnx_cache=args.onnx_cache, int8_calibration=args.int8_calibration,
        batch_size=args.batch_size, workers=args.workers,
        index_factory=args.index_factory, flat_threshold=args.flat_threshold,
        on_disk_threshold=args.on_disk_threshold, rerank=args.rerank, keep_duplicates=args.keep_duplicates,
        discard_live_changes=args.discard_live_changes, batches_per_shard=args.batches_per_shard,
        max_pixels=args.max_pixels,
        columns=Columns(image=args.image_column, caption=args.caption_column, text=args.text_column),
        progress=not args.no_progress, caption=_caption_config(args), keyword_fields=args.keyword_fields,
        fuse=args.fuse, engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
        ocr=_ocr_config(args))


def _ocr_config(args: argparse.Namespace) -> OcrConfig | None:
    if not args.ocr:
        return None
    return OcrConfig(detection_side=args.ocr_detection_side, max_side=args.ocr_max_side,
                     detection_min_score=args.ocr_detection_min_score,
                     recognition_min_score=args.ocr_recognition_min_score,
                     detection_model=args.ocr_detection_model, recognition_model=args.ocr_recognition_model,
                     classifier_model=args.ocr_classifier_model, threads=args.ocr_threads,
                     timeout_s=args.ocr_timeout_s)


def _field_names(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give one or more metadata field names, comma-separated")
    return names


def _caption_config(args: argparse.Namespace) -> CaptionConfig | None:
    if args.caption_model is None:
        return None
    pretrained = None if args.caption_checkpoint is not None or args.caption_pretrained in ("none", "") \
        else args.caption_pretrained or (DEFAULT_CAPTION_PRETRAINED if args.caption_model == DEFAULT_CAPTION_MODEL
                                         else None)
    return CaptionConfig(model=args.caption_model, pretrained=pretrained, checkpoint=args.caption_checkpoint,
                         device=args.device, generation=args.caption_generation, max_tokens=args.caption_max_tokens,
                         batch_size=args.caption_batch_size)


def _up_to_date(config: BuildConfig) -> bool:
    try:
        manifest = read_manifest(config.out)
    except ClipSearchError:
        return False
    return is_up_to_date(config, manifest.corpus_fingerprint)



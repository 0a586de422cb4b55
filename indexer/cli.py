"""Command line of the indexer: parse_args(argv) and main(argv)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from clipsearch.config import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    GENERATION_TYPES,
    OFFLINE_MODEL,
    CaptionConfig,
    CompactionPolicy,
)
from clipsearch.errors import BundleReplaced, CheckpointRequired, ClipSearchError, InvalidQuery
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build, is_up_to_date
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.distributed import ENGINES
from clipsearch.ingest.shards import work_dir_for
from clipsearch.ingest.sources import Columns
from clipsearch.model.captions import OFFLINE_CAPTION_MODEL
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.onnx_backend import BACKENDS
from clipsearch.quality.finetune import FinetuneConfig
from clipsearch.search.hybrid import FusionMethod, SearchMode
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog
from clipsearch.store.manifest import check_model, read_manifest

DEFAULTS = BuildConfig(out=Path("bundle"))
"""The indexer's defaults are BuildConfig's (and FinetuneConfig's): no number is written twice."""
TUNING = FinetuneConfig()
COMPACTION = CompactionPolicy()
LIVE_ATTEMPTS = 3
Result = TypeVar("Result")
CAPTIONS = CaptionConfig()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m indexer",
                                     description="Embed image and text corpora into a searchable bundle.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("build", help="build (or resume building) a bundle",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--images", type=Path,
                         help="a folder of images (searched recursively; name.txt / name.json beside an image "
                              "are its caption / metadata) or a CSV, JSONL or Parquet manifest with an image column")
    command.add_argument("--texts", type=Path,
                         help="a text corpus: .txt (one text per line), or JSONL / CSV with a text column")
    command.add_argument("--out", type=Path, required=True,
                         help="the bundle directory to write (an existing bundle there is replaced when done)")
    _add_model_arguments(command, DEFAULTS.model)
    _add_speed_arguments(command)
    command.add_argument("--index-factory", default=None,
                         help="a FAISS index factory string (e.g. 'IVF4096,Flat' or 'HNSW32'); by default exact "
                              "'Flat' up to --flat-threshold items, IVF above")
    command.add_argument("--flat-threshold", type=_positive_int, default=DEFAULTS.flat_threshold,
                         help="largest corpus indexed exactly when no --index-factory is given")
    command.add_argument("--on-disk-threshold", type=_positive_int, default=DEFAULTS.on_disk_threshold,
                         help="largest corpus whose IVF index holds whole vectors when no --index-factory is given; "
                              "past it, IVF-PQ with its lists on disk (as any 'IVF…,PQ…' --index-factory is)")
    command.add_argument("--rerank", type=_positive_int, default=DEFAULTS.rerank,
                         help="for an on-disk IVF-PQ index: candidates per result re-ranked exactly from the fp16 "
                              "vectors stored beside it (1: no re-rank)")
    command.add_argument("--keep-duplicates", action="store_true",
                         help="index files with identical content once each (default: only the first)")
    command.add_argument("--fuse", type=_fusion, default=None,
                         help="store caption vectors and search each image by its image and its caption, weighted "
                              "(e.g. 'image=0.7,caption=0.3'; equal weights: average fusion)")
    command.add_argument("--keyword-fields", type=_field_names, default=(),
                         help="metadata fields searched by keyword besides captions and texts, comma-separated "
                              "(e.g. 'title,tags,place')")
    command.add_argument("--discard-live-changes", action="store_true",
                         help="replace a bundle that holds live changes (items added, edited or deleted over "
                              "HTTP since it was built), dropping them; without it such a rebuild is refused")
    command.add_argument("--batches-per-shard", type=_positive_int, default=DEFAULTS.batches_per_shard,
                         help="batches written per resumable shard")
    command.add_argument("--engine", choices=ENGINES, default=DEFAULTS.engine,
                         help="what embeds the items: this process ('local'), or Ray Data on this machine or a "
                              "cluster ('ray', the [ray] extra: one model per actor, a GPU each where there are any)")
    command.add_argument("--ray-address", default=DEFAULTS.ray_address,
                         help="the Ray cluster for --engine ray (default: RAY_ADDRESS, else a Ray instance started "
                              "on this machine)")
    command.add_argument("--ray-actors", type=_positive_int, default=DEFAULTS.ray_actors,
                         help="embedding actors for --engine ray (default: one per GPU of the cluster, else 1)")
    _add_image_arguments(command)
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
    command.add_argument("--caption-max-tokens", type=_positive_int, default=CAPTIONS.max_tokens,
                         help="longest caption, in tokens")
    command.add_argument("--caption-batch-size", type=_positive_int, default=CAPTIONS.batch_size,
                         help="images captioned per generation call")
    labelling = commands.add_parser(
        "classify", help="zero-shot label every image of a bundle and store the label and its probability in "
                         "each item's metadata", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    labelling.add_argument("--bundle", type=Path, required=True, help="the bundle to label (rewritten in place, "
                                                                      "atomically)")
    labelling.add_argument("--labels", required=True, help="the labels, comma-separated: 'beach,mountains,city'")
    labelling.add_argument("--template", action="append", default=None,
                           help="a prompt template with {} for the label, e.g. 'a photo of a {}.'; repeat for an "
                                "ensemble (default: a small built-in ensemble)")
    labelling.add_argument("--field", default="label",
                           help="the metadata field for the label; its probability goes in FIELD_score "
                                "(FIELD_scores with --multi-label)")
    labelling.add_argument("--multi-label", action="store_true",
                           help="score each label on its own and store every label at or above --threshold")
    labelling.add_argument("--threshold", type=float, default=0.5, help="with --multi-label, the probability a "
                                                                       "label needs to be stored in FIELD")
    _add_model_arguments(labelling, None)
    labelling.add_argument("--no-progress", action="store_true", help="no progress bar")
    syncing = commands.add_parser(
        "sync", help="bring a bundle up to date with its sources without a rebuild: embed new and changed files, "
                     "drop deleted ones, keep the vectors of moved ones",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    syncing.add_argument("--bundle", type=Path, required=True, help="the bundle to update (through its live log; a "
                                                                    "server serving it sees the changes at once)")
    syncing.add_argument("--images", type=Path, default=None, help="the image folder or manifest it was built from")
    syncing.add_argument("--texts", type=Path, default=None, help="the text file it was built from (the same path "
                                                                  "as at build time: text items are named after it)")
    syncing.add_argument("--text-column", default=DEFAULTS.columns.text, help="text column of a JSONL or CSV file")
    _add_model_arguments(syncing, None)
    _add_speed_arguments(syncing)
    _add_image_arguments(syncing)
    syncing.add_argument("--no-progress", action="store_true", help="no progress bar")
    adding = commands.add_parser(
        "add", help="add texts or image files to a bundle, or replace them by key, through its live log",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    adding.add_argument("--bundle", type=Path, required=True, help="the bundle to add to")
    adding.add_argument("--text", action="append", default=[], help="a text to add (repeat for more)")
    adding.add_argument("--image", action="append", default=[], type=Path, help="an image file to add (repeat for "
                                                                                   "more; not with --text)")
    adding.add_argument("--key", action="append", default=[],
                        help="the key of each item, in order (repeat; an existing key replaces that item and keeps "
                             "its id); default: new keys")
    adding.add_argument("--caption", action="append", default=[], help="the caption of each image, in order")
    adding.add_argument("--metadata", default="{}", help="a JSON object given to every item added")
    _add_model_arguments(adding, None)
    deleting = commands.add_parser("delete", help="delete items from a bundle through its live log",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    deleting.add_argument("--bundle", type=Path, required=True, help="the bundle to delete from")
    which = deleting.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", type=int, nargs="+", help="ids of the items to delete")
    which.add_argument("--keys", nargs="+", help="keys of the items to delete (a built item's key is its uri)")
    which.add_argument("--filter", help="delete every item passing this filter (JSON, as in searches)")
    deleting.add_argument("--modality", choices=["image", "text"], default="image",
                          help="with --keys: which modality the keys are of")
    compacting = commands.add_parser(
        "compact", help="fold a bundle's live changes into its base (a server serving it loads the result by itself)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    compacting.add_argument("--bundle", type=Path, required=True, help="the bundle to compact")
    compacting.add_argument("--if-due", action="store_true",
                            help="only if its live and hidden items reach --min-changes and --fraction of the base "
                                 "(for a cron job)")
    compacting.add_argument("--min-changes", type=_non_negative_int, default=COMPACTION.min_changes,
                            help="with --if-due: never for fewer changes than this")
    compacting.add_argument("--fraction", type=float, default=COMPACTION.fraction,
                            help="with --if-due: due once the changes reach this share of the base")
    compacting.add_argument("--retrain-fraction", type=float, default=COMPACTION.retrain_fraction,
                            help="train an IVF index again (and measure its recall again) once the rows added since "
                                 "its training reach this share of the rows it was trained with")
    evaluation = commands.add_parser(
        "eval", help="retrieval quality (recall@1/5/10 both ways, mean rank) of a model on image-caption pairs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluation.add_argument("--pairs", type=Path, required=True,
                            help="a folder whose name.txt beside each image holds its captions, one per line, or a "
                                 "CSV, JSONL or Parquet manifest with image and caption columns (one row per pair)")
    evaluation.add_argument("--bundle", type=Path, default=None,
                            help="evaluate the model of this bundle, and record the figures in its manifest")
    evaluation.add_argument("--through", metavar="URL", default=None,
                            help="also evaluate a running server over HTTP (its bundle built from the same --pairs "
                                 "images, and their captions as texts for image → text), against its model's exact "
                                 "figures")
    evaluation.add_argument("--api-key", default=None, help="the server's API key (default: $CLIPSEARCH_API_KEY)")
    evaluation.add_argument("--mode", choices=[mode.value for mode in SearchMode], default=SearchMode.VECTOR.value,
                            help="with --bundle or --through: also measure text → image as searches of that mode "
                                 "rank the images (keyword and hybrid search the images' own captions)")
    evaluation.add_argument("--hybrid-method", choices=[method.value for method in FusionMethod],
                            default=FusionMethod.RRF.value, help="how --mode hybrid fuses its two rankings")
    evaluation.add_argument("--vector-weight", type=float, default=0.5,
                            help="--mode hybrid: the vector ranking's share, 0 to 1")
    evaluation.add_argument("--fuse", type=_fusion, default=None,
                            help="with a bundle built with --fuse: weigh image and caption so (e.g. 'image=1' for "
                                 "the image alone) in the searched figures")
    _add_model_arguments(evaluation, None)
    _add_speed_arguments(evaluation)
    _add_image_arguments(evaluation)
    evaluation.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    tuning = commands.add_parser(
        "finetune", help="fine-tune a model on image-caption pairs; writes a checkpoint for --checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tuning.add_argument("--pairs", type=Path, required=True, help="the same inputs as eval's --pairs")
    tuning.add_argument("--out", type=Path, required=True, help="the checkpoint file to write")
    _add_model_arguments(tuning, DEFAULTS.model)
    tuning.add_argument("--loss", choices=["contrastive", "triplet"], default=TUNING.loss,
                        help="CLIP's symmetric InfoNCE, or a margin loss against the hardest in-batch negatives")
    tuning.add_argument("--margin", type=float, default=TUNING.margin, help="the triplet loss's margin")
    tuning.add_argument("--lock-image", action="store_true", help="train the text tower only (LiT-style)")
    tuning.add_argument("--lock-text", action="store_true", help="train the image tower only")
    tuning.add_argument("--lr", type=float, default=TUNING.learning_rate, help="peak learning rate")
    tuning.add_argument("--warmup", type=_non_negative_int, default=TUNING.warmup_steps,
                        help="optimiser steps of linear warmup, before the cosine decay")
    tuning.add_argument("--weight-decay", type=float, default=TUNING.weight_decay, help="AdamW's weight decay")
    tuning.add_argument("--epochs", type=_positive_int, default=TUNING.epochs, help="most passes over the pairs")
    tuning.add_argument("--batch-size", type=_positive_int, default=TUNING.batch_size, help="pairs per batch")
    tuning.add_argument("--accumulate", type=_positive_int, default=TUNING.accumulate,
                        help="batches per optimiser step (gradient accumulation)")
    tuning.add_argument("--held-out", type=float, default=TUNING.held_out,
                        help="images kept out for evaluation: a share below 1, or a count")
    tuning.add_argument("--patience", type=_positive_int, default=TUNING.patience,
                        help="epochs without a better held-out text→image R@5 (or, at equal R@5, mean rank) before "
                             "stopping")
    tuning.add_argument("--max-minutes", type=float, default=None, help="stop training after this long")
    tuning.add_argument("--seed", type=int, default=TUNING.seed, help="the split, the order and the captions drawn")
    tuning.add_argument("--workers", type=_non_negative_int, default=TUNING.workers,
                        help="image decoding worker processes")
    _add_image_arguments(tuning)
    tuning.add_argument("--json", action="store_true", help="print the result as one JSON object")
    tuning.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo = commands.add_parser("demo-data", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                               help="write a demo corpus: public-domain photos (needs scikit-image) or rendered "
                                    "shapes with captions")
    demo.add_argument("--out", type=Path, required=True, help="folder to write images/ (and texts.txt) into")
    demo.add_argument("--kind", choices=["photos", "shapes"], default="photos",
                      help="photos: scikit-image's sample photos and captions; shapes: generated scenes of coloured "
                           "shapes, three captions each (a paired corpus for eval and finetune)")
    demo.add_argument("--count", type=_positive_int, default=3000, help="scenes to render (shapes)")
    demo.add_argument("--seed", type=int, default=0, help="the scenes follow from it (shapes)")
    args = parser.parse_args(argv)
    if args.command in ("demo-data", "compact", "delete"):  # no model to name
        return args
    if args.checkpoint is not None and args.pretrained not in (None, "none", ""):
        parser.error("give either --pretrained or --checkpoint, not both")
    if args.command == "eval":
        if args.bundle is not None and args.through is not None:
            parser.error("give --bundle or --through, not both")
        if (args.bundle or args.through) is not None and (args.model is not None or args.pretrained is not None):
            parser.error("--bundle and --through name the model: leave out --model and --pretrained")
        if args.bundle is None and args.model is None:
            args.model = DEFAULT_MODEL
        return args
    if args.command == "sync":
        if args.model is not None or args.pretrained is not None:
            parser.error("--bundle names the model: leave out --model and --pretrained")
        if args.images is None and args.texts is None:
            parser.error("give --images, --texts or both")
        return args
    if args.command == "add":
        if args.model is not None or args.pretrained is not None:
            parser.error("--bundle names the model: leave out --model and --pretrained")
        if bool(args.text) == bool(args.image):
            parser.error("give --text or --image (one or more), not both")
        count = len(args.text or args.image)
        for name in ("key", "caption"):
            given = getattr(args, name)
            if given and len(given) != count:
                parser.error(f"give one --{name} per item ({count}) or none, got {len(given)}")
        if args.caption and args.text:
            parser.error("--caption is for images; a text is its own caption")
        return args
    if args.command == "classify":
        if args.model is not None or args.pretrained is not None:
            parser.error("--bundle names the model: leave out --model and --pretrained")
        if not args.field.strip():
            parser.error("--field must not be empty")
        return args
    if args.command == "finetune":
        if args.lock_image and args.lock_text:
            parser.error("--lock-image and --lock-text together leave nothing to train")
        return args
    if args.images is None and args.texts is None:
        parser.error("give --images, --texts or both")
    return args


def _add_model_arguments(command: argparse.ArgumentParser, default_model: str | None) -> None:
    command.add_argument("--model", default=default_model,
                         help=f"open_clip model name (default {DEFAULT_MODEL}); {OFFLINE_MODEL!r} is a tiny "
                              "random-weight model that needs no download")
    command.add_argument("--pretrained", default=None,
                         help=f"open_clip pretrained tag (default {DEFAULT_PRETRAINED} for {DEFAULT_MODEL}, none for "
                              "other models); 'none' for random weights")
    command.add_argument("--checkpoint", type=Path, default=None,
                         help="a local checkpoint file to load instead of a pretrained tag")
    command.add_argument("--device", default=DEFAULTS.device,
                         help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    command.add_argument("--backend", choices=BACKENDS, default=os.environ.get("CLIPSEARCH_BACKEND", DEFAULTS.backend),
                         help="what runs the model: 'onnx' / 'onnx-int8' (ONNX Runtime, CPU only, needs the [onnx] "
                              "extra), 'torch', or 'auto' (onnx on a CPU when installed, else torch); "
                              "$CLIPSEARCH_BACKEND sets the default")
    command.add_argument("--onnx-cache", type=Path, default=os.environ.get("CLIPSEARCH_ONNX_CACHE") or None,
                         help="where ONNX exports are cached (default: $CLIPSEARCH_ONNX_CACHE, else "
                              "~/.cache/clipsearch/onnx)")


def _add_speed_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                         help="items encoded per forward pass")
    command.add_argument("--workers", type=_non_negative_int, default=DEFAULTS.workers,
                         help="image decoding worker processes (0 decodes in the main process)")


def _add_image_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--max-pixels", type=_positive_int, default=DEFAULTS.max_pixels,
                         help="images declaring more pixels are skipped (decompression-bomb guard)")
    command.add_argument("--image-column", default=DEFAULTS.columns.image, help="image path column of a manifest")
    command.add_argument("--caption-column", default=DEFAULTS.columns.caption, help="caption column of a manifest")


def bundle_encoder(args: argparse.Namespace) -> ClipEncoder:
    """The model `args.bundle` was built with, loaded as `args` ask (device, backend), checked against it."""
    manifest = read_manifest(args.bundle)
    if manifest.model.checkpoint_sha256 and args.checkpoint is None:
        raise CheckpointRequired("the bundle was built from a checkpoint file; give it with --checkpoint")
    encoder = load_encoder(manifest.model.name, manifest.model.pretrained,
                           args.checkpoint if manifest.model.checkpoint_sha256 else None, args.device,
                           backend=args.backend, onnx_cache=args.onnx_cache)
    check_model(manifest, encoder.ref, encoder.embedding_dim)
    return encoder


def on_live_bundle(path: Path, dim: int | None, work: Callable[[Bundle, LiveLog], Result]) -> Result:
    """`work(bundle, log)` on the bundle at `path` and its live log (vectors of `dim`, default the
    bundle's). A write that finds the bundle compacted or rebuilt under it (BundleReplaced) wrote
    nothing; the work runs again on the new bundle, up to LIVE_ATTEMPTS times in all."""
    for attempt in range(1, LIVE_ATTEMPTS + 1):
        bundle = load_bundle(path)
        live = LiveLog(path / LIVE_FILE, bundle.items, dim or bundle.manifest.embedding_dim)
        try:
            return work(bundle, live)
        except BundleReplaced:
            if attempt == LIVE_ATTEMPTS:
                raise
            print(f"{path} was compacted or rebuilt meanwhile; nothing was written; running again", file=sys.stderr)
        finally:
            live.close()
            bundle.close()
    raise AssertionError("unreachable: the last attempt returns or raises")


def pretrained_of(args: argparse.Namespace) -> str | None:
    """The pretrained tag the arguments ask for: the default model's default tag unless told otherwise."""
    if args.checkpoint is not None or args.pretrained in ("none", ""):
        return None
    if args.pretrained is not None:
        return str(args.pretrained)
    return DEFAULT_PRETRAINED if args.model == DEFAULT_MODEL else None


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        out=args.out, images=args.images, texts=args.texts, model=args.model, pretrained=pretrained_of(args),
        checkpoint=args.checkpoint, device=args.device, backend=args.backend, onnx_cache=args.onnx_cache,
        batch_size=args.batch_size, workers=args.workers,
        index_factory=args.index_factory, flat_threshold=args.flat_threshold,
        on_disk_threshold=args.on_disk_threshold, rerank=args.rerank, keep_duplicates=args.keep_duplicates,
        discard_live_changes=args.discard_live_changes, batches_per_shard=args.batches_per_shard,
        max_pixels=args.max_pixels,
        columns=Columns(image=args.image_column, caption=args.caption_column, text=args.text_column),
        progress=not args.no_progress, caption=_caption_config(args), keyword_fields=args.keyword_fields,
        fuse=args.fuse, engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors)


def _fusion(value: str) -> Fusion:
    try:
        return Fusion.parse(value)
    except InvalidQuery as error:
        raise argparse.ArgumentTypeError(error.reason) from None


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


def describe_error(error: ClipSearchError) -> str:
    """The core's message, with the field it names spelled as this command's flag."""
    return f"--{error.field.replace('_', '-')}: {error.reason}" if error.field else str(error)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipsearch").setLevel(logging.INFO)
    if args.command == "demo-data" and args.kind == "shapes":
        from indexer.shapes import write_shapes_corpus

        count = write_shapes_corpus(args.out, args.count, args.seed)
        print(f"wrote {count} scenes with captions to {args.out / 'images'}")
        return 0
    if args.command == "demo-data":
        from indexer.demo import write_demo_corpus

        images, texts = write_demo_corpus(args.out)
        print(f"wrote {images} images with captions and {texts} texts to {args.out}")
        return 0
    if args.command == "eval":
        from indexer.evaluation import run_eval

        return run_eval(args)
    if args.command == "classify":
        from indexer.labelling import run_classify

        return run_classify(args)
    if args.command == "sync":
        from indexer.syncing import run_sync

        return run_sync(args)
    if args.command == "compact":
        from indexer.syncing import run_compact

        return run_compact(args)
    if args.command in ("add", "delete"):
        from indexer.editing import run_add, run_delete

        return run_add(args) if args.command == "add" else run_delete(args)
    if args.command == "finetune":
        from indexer.tuning import run_finetune

        return run_finetune(args)
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
    for entry in summary.report["skipped"][:20]:
        print(f"  skipped {entry['uri']}: {entry['reason']}")
    if summary.skipped > 20:
        print(f"  … and {summary.skipped - 20} more, listed in {config.out / 'report.json'}")
    return 0

"""What several indexer commands share: argument types and groups, the bundle's model, error text."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

from clipsearch.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, OFFLINE_MODEL, default_pretrained
from clipsearch.errors import CheckpointRequired, ClipSearchError, InvalidQuery
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.config import BuildConfig
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.onnx_backend import BACKENDS
from clipsearch.search import open as opening
from clipsearch.store.bundle import Bundle
from clipsearch.store.catalog import check_collection_name
from clipsearch.store.live import LiveLog
from clipsearch.store.manifest import check_model, read_manifest

DEFAULTS = BuildConfig(out=Path("bundle"))
"""The indexer's defaults are BuildConfig's (and FinetuneConfig's): no number is written twice."""
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Fail = Callable[[str], None]
"""The parser's error(): prints the usage and the message, and exits 2."""
Result = TypeVar("Result")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fusion_weights(value: str) -> Fusion:
    try:
        return Fusion.parse(value)
    except InvalidQuery as error:
        raise argparse.ArgumentTypeError(error.reason) from None


def add_collection_arguments(command: argparse.ArgumentParser, target: str) -> None:
    """--collection NAME, with --data-dir: a collection of a server's folder of collections, instead of
    the bundle path `--{target}` (resolved by `resolve_collection`)."""
    command.add_argument("--collection", default=None,
                         help=f"instead of --{target}: the collection of this name in --data-dir (a server with "
                              "CLIPSEARCH_DATA_DIR serves it at /collections/NAME, or made with it within a poll)")
    command.add_argument("--data-dir", type=Path, default=os.environ.get("CLIPSEARCH_DATA_DIR") or None,
                         help="the server's folder of collections (default: $CLIPSEARCH_DATA_DIR)")


def resolve_collection(args: argparse.Namespace, target: str, fail: Fail) -> None:
    """Set `args.<target>` to the bundle of --collection in --data-dir, or check that it was given."""
    given = getattr(args, target)
    if args.collection is None:
        if given is None:
            fail(f"give --{target} or --collection")
        return
    if given is not None:
        fail(f"give --{target} or --collection, not both")
    if args.data_dir is None:
        fail("--collection needs --data-dir (or $CLIPSEARCH_DATA_DIR): the server's folder of collections")
    try:
        check_collection_name(args.collection)
    except InvalidQuery as error:
        fail(f"--collection: {error.reason}")
    setattr(args, target, args.data_dir / args.collection)


def add_model_arguments(command: argparse.ArgumentParser, default_model: str | None) -> None:
    command.add_argument("--model", default=default_model,
                         help=f"open_clip model name (default {DEFAULT_MODEL}); {OFFLINE_MODEL!r} is a tiny "
                              "random-weight model that needs no download")
    command.add_argument("--pretrained", default=None,
                         help=f"open_clip pretrained tag (default {DEFAULT_PRETRAINED} for {DEFAULT_MODEL}, none for "
                              "other models); 'none' for random weights")
    command.add_argument("--checkpoint", type=Path, default=None,
                         help="a local checkpoint file to load instead of a pretrained tag")
    command.add_argument("--text-language", default=os.environ.get("CLIPSEARCH_TEXT_LANGUAGE") or None,
                         help="the language code of the texts, for a tokenizer that takes one (NLLB models: "
                              "'zho_Hans', 'eng_Latn'; default: its own, eng_Latn); $CLIPSEARCH_TEXT_LANGUAGE sets "
                              "the default")
    command.add_argument("--device", default=DEFAULTS.device,
                         help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    command.add_argument("--backend", choices=BACKENDS, default=os.environ.get("CLIPSEARCH_BACKEND", DEFAULTS.backend),
                         help="what runs the model: 'onnx' / 'onnx-int8' (ONNX Runtime, CPU only, needs the [onnx] "
                              "extra), 'openvino' / 'openvino-int8' (OpenVINO, needs the [openvino] extra), "
                              "'torch', or 'auto' (on a CPU the faster of onnx and openvino at start-up, or the "
                              "one installed; else torch); $CLIPSEARCH_BACKEND sets the default")
    command.add_argument("--onnx-cache", type=Path, default=os.environ.get("CLIPSEARCH_ONNX_CACHE") or None,
                         help="where ONNX exports are cached (default: $CLIPSEARCH_ONNX_CACHE, else "
                              "~/.cache/clipsearch/onnx)")
    command.add_argument("--int8-calibration", type=Path,
                         default=os.environ.get("CLIPSEARCH_INT8_CALIBRATION") or None,
                         help="a folder of the collection's own images (and caption .txt files) that --backend "
                              "onnx-int8 is calibrated on (default: $CLIPSEARCH_INT8_CALIBRATION; for build, its "
                              "--images folder)")


def add_speed_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                         help="items encoded per forward pass")
    command.add_argument("--workers", type=non_negative_int, default=DEFAULTS.workers,
                         help="image decoding worker processes (0 decodes in the main process)")


def add_image_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--max-pixels", type=positive_int, default=DEFAULTS.max_pixels,
                         help="images declaring more pixels are skipped (decompression-bomb guard)")
    command.add_argument("--image-column", default=DEFAULTS.columns.image, help="image path column of a manifest")
    command.add_argument("--caption-column", default=DEFAULTS.columns.caption, help="caption column of a manifest")


def check_model_from_bundle(args: argparse.Namespace, fail: Fail) -> None:
    """Commands on a bundle load the model that built it: naming another one is a mistake."""
    if args.model is not None or args.pretrained is not None:
        fail("--bundle names the model: leave out --model and --pretrained")


def check_weights(args: argparse.Namespace, fail: Fail) -> None:
    if args.checkpoint is not None and args.pretrained not in (None, "none", ""):
        fail("give either --pretrained or --checkpoint, not both")


def pretrained_of(args: argparse.Namespace) -> str | None:
    """The pretrained tag the arguments ask for: the default model's default tag unless told otherwise."""
    if args.checkpoint is not None or args.pretrained in ("none", ""):
        return None
    if args.pretrained is not None:
        return str(args.pretrained)
    return default_pretrained(args.model) if args.model else None


def bundle_encoder(args: argparse.Namespace) -> ClipEncoder:
    """The model `args.bundle` was built with, loaded as `args` ask (device, backend), checked against it."""
    manifest = read_manifest(args.bundle)
    if manifest.model.checkpoint_sha256 and args.checkpoint is None:
        raise CheckpointRequired("the bundle was built from a checkpoint file; give it with --checkpoint")
    encoder = load_encoder(manifest.model.name, manifest.model.pretrained,
                           args.checkpoint if manifest.model.checkpoint_sha256 else None, args.device,
                           backend=args.backend, onnx_cache=args.onnx_cache, text_language=args.text_language,
                           int8_calibration=args.int8_calibration)
    check_model(manifest, encoder.ref, encoder.embedding_dim)
    return encoder


def on_live_bundle(path: Path, dim: int | None, work: Callable[[Bundle, LiveLog], Result]) -> Result:
    """clipsearch.search.open.on_live_bundle, saying on stderr when the work runs again."""

    def retrying() -> None:
        print(f"{path} was compacted or rebuilt meanwhile; nothing was written; running again", file=sys.stderr)

    return opening.on_live_bundle(path, dim, work, on_retry=retrying)


def describe_error(error: ClipSearchError) -> str:
    """The core's message, with the field it names spelled as this command's flag."""
    return f"--{error.field.replace('_', '-')}: {error.reason}" if error.field else str(error)


def failed(error: ClipSearchError) -> int:
    """Report a refused command on stderr; its exit status."""
    print(f"error: {describe_error(error)}", file=sys.stderr)
    return 2

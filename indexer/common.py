"""What several indexer commands share: argument types and groups, the bundle's model, error text."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

from clipsearch.config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    OFFLINE_MODEL,
    AudioSampling,
    VideoSampling,
    default_pretrained,
)
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


VIDEO = VideoSampling()
SOUND = AudioSampling()


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def add_video_arguments(command: argparse.ArgumentParser, cutting: bool = True) -> None:
    """--videos and the bounds on reading one; with `cutting`, how they are cut into segments (a
    build's: a sync cuts as the bundle's manifest records)."""
    group = command.add_argument_group("videos (the [video] extra: PyAV)")
    group.add_argument("--videos", type=Path,
                       help="a folder of videos (searched recursively, recognised by content: MP4, MOV, WebM, MKV, "
                            "AVI; name.txt / name.json beside one are its caption / metadata), or one video file")
    if cutting:
        group.add_argument("--video-scene-threshold", type=positive_float, default=VIDEO.scene_threshold,
                           help="a frame that differs from the one examined before it by more than this (mean "
                                "absolute difference of 16x16 colour pictures, 0 to 1) starts a segment")
        group.add_argument("--video-max-gap-s", type=positive_float, default=VIDEO.max_gap_s,
                           help="a segment starts at least this often, scene change or not")
        group.add_argument("--video-max-segments", type=positive_int, default=VIDEO.max_segments,
                           help="most segments per video (the least distinct neighbours are merged past it)")
        group.add_argument("--video-analysis-fps", type=positive_float, default=VIDEO.analysis_fps,
                           help="frames examined for scene changes per second of video")
    group.add_argument("--video-max-seconds", type=positive_float, default=VIDEO.max_seconds,
                       help="longer videos are skipped and reported")
    group.add_argument("--video-timeout-s", type=positive_float, default=VIDEO.decode_timeout_s,
                       help="a video not read within this long is skipped and reported")


def video_sampling(args: argparse.Namespace) -> VideoSampling:
    """The sampling add_video_arguments' flags give (the command's check refuses more than MAX_SEGMENTS);
    the default cutting where they do not set it."""
    return VideoSampling(scene_threshold=getattr(args, "video_scene_threshold", VIDEO.scene_threshold),
                         max_gap_s=getattr(args, "video_max_gap_s", VIDEO.max_gap_s),
                         max_segments=getattr(args, "video_max_segments", VIDEO.max_segments),
                         analysis_fps=getattr(args, "video_analysis_fps", VIDEO.analysis_fps),
                         max_seconds=args.video_max_seconds, max_pixels=VIDEO.max_pixels,
                         decode_timeout_s=args.video_timeout_s)


def add_audio_arguments(command: argparse.ArgumentParser, cutting: bool = True) -> None:
    """--audio and the bounds on reading a recording; with `cutting`, the audio model and how recordings
    are cut into windows (a sync embeds and cuts as the bundle's manifest says)."""
    group = command.add_argument_group("sounds (the [audio] extra: CLAP through transformers, PyAV)")
    group.add_argument("--audio", type=Path,
                       help="a folder of sound files (searched recursively, recognised by content: WAV, FLAC, MP3, "
                            "Ogg, M4A; name.txt / name.json beside one are its caption / metadata), or one sound file")
    if cutting:
        group.add_argument("--audio-model", default=SOUND.model,
                           help="the CLAP model that embeds sounds and the texts that search them: a Hugging Face "
                                "repository id, a local directory, or the offline tiny-clap (random weights)")
        group.add_argument("--audio-hop-s", type=positive_float, default=SOUND.hop_s,
                           help="seconds between the starts of a recording's windows (each as long as the model's, "
                                "10 s for CLAP): less overlaps more")
        group.add_argument("--video-sound", action=argparse.BooleanOptionalAction, default=None,
                           help="index each video's sound track too, as a sound item with the video's key, searched "
                                "by text→audio and audio→audio queries (default: when --audio gives sounds; "
                                "--video-sound alone loads the audio model for the videos' sounds)")
    group.add_argument("--audio-max-seconds", type=positive_float, default=SOUND.max_seconds,
                       help="longer recordings are skipped and reported")
    group.add_argument("--audio-timeout-s", type=positive_float, default=SOUND.decode_timeout_s,
                       help="a recording not read within this long is skipped and reported")


def audio_sampling(args: argparse.Namespace) -> AudioSampling:
    """The cutting and bounds add_audio_arguments' flags give."""
    video_sound = getattr(args, "video_sound", None)
    return AudioSampling(model=getattr(args, "audio_model", SOUND.model),
                         hop_s=getattr(args, "audio_hop_s", SOUND.hop_s), max_seconds=args.audio_max_seconds,
                         decode_timeout_s=args.audio_timeout_s,
                         video_sound=args.audio is not None if video_sound is None else video_sound)


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

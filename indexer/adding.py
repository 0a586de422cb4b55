"""`python -m indexer add`: the HTTP API's adds, for scripts that work on a bundle's directory. They
go through the same checks and live log as the server's (clipsearch.search.writes), so a server
serving the bundle sees them at its next search."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from clipsearch.config import WriteLimits
from clipsearch.errors import ClipSearchError, InvalidQuery
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import audio_model_of
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry, TextEntry
from clipsearch.store.bundle import Bundle
from clipsearch.store.live import LiveLog
from indexer.common import (
    Commands,
    Fail,
    add_model_arguments,
    bundle_encoder,
    check_model_from_bundle,
    check_weights,
    describe_error,
    on_live_bundle,
)

Result = TypeVar("Result")


def add_parser(commands: Commands) -> None:
    command = commands.add_parser(
        "add", help="add texts or image files to a bundle, or replace them by key, through its live log",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--bundle", type=Path, required=True, help="the bundle to add to")
    command.add_argument("--text", action="append", default=[], help="a text to add (repeat for more)")
    command.add_argument("--image", action="append", default=[], type=Path, help="an image, video or sound file to "
                         "add, told apart by its content (repeat for more; not with --text)")
    command.add_argument("--key", action="append", default=[],
                         help="the key of each item, in order (repeat; an existing key replaces that item and keeps "
                              "its id); default: new keys")
    command.add_argument("--caption", action="append", default=[], help="the caption of each image, in order")
    command.add_argument("--metadata", default="{}", help="a JSON object given to every item added")
    add_model_arguments(command, None)


def check(args: argparse.Namespace, fail: Fail) -> None:
    check_weights(args, fail)
    check_model_from_bundle(args, fail)
    if bool(args.text) == bool(args.image):
        fail("give --text or --image (one or more), not both")
    count = len(args.text or args.image)
    for name in ("key", "caption"):
        given = getattr(args, name)
        if given and len(given) != count:
            fail(f"give one --{name} per item ({count}) or none, got {len(given)}")
    if args.caption and args.text:
        fail("--caption is for images; a text is its own caption")


def run(args: argparse.Namespace) -> int:
    try:
        metadata = _metadata(args.metadata)
        keys = args.key or [None] * len(args.text or args.image)
        if args.text:
            entries: list[Any] = [TextEntry(text, key, metadata) for text, key in zip(args.text, keys, strict=True)]
        else:
            captions = args.caption or [None] * len(args.image)
            entries = [ImageEntry(_read(path, number), key, caption, metadata)
                       for number, (path, key, caption) in enumerate(zip(args.image, keys, captions, strict=True))]
        encoder = bundle_encoder(args)

        def add(writer: CollectionWriter) -> list[int]:
            return writer.add_texts(entries, "text") if args.text else writer.add_images(entries, "image")

        ids = _with_writer(args, add, encoder)
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(json.dumps({"ids": ids}))
    return 0


def _with_writer(args: argparse.Namespace, write: Callable[[CollectionWriter], Result], encoder: ClipEncoder) -> Result:
    """Run `write` with a writer over the bundle (again on the new bundle if a compaction swapped it
    in meanwhile). One command is one write, of any size."""

    def on(bundle: Bundle, live: LiveLog) -> Result:
        service = SearchService(encoder, bundle, live=live, audio=audio_model_of(bundle.manifest, encoder))
        try:
            return write(CollectionWriter(service, replace(WriteLimits(), max_items=sys.maxsize)))
        finally:
            service.close()

    return on_live_bundle(args.bundle, encoder.embedding_dim, on)


def _metadata(text: str) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidQuery("metadata", f"not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise InvalidQuery("metadata", "must be a JSON object")
    return metadata


def _read(path: Path, number: int) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidQuery(f"image[{number}]", f"cannot read {path}: {error.strerror or error}") from None

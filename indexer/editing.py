"""`python -m indexer add` and `python -m indexer delete`: the HTTP API's writes, for scripts that
work on a bundle's directory. They go through the same checks and live log as the server's
(clipsearch.search.writes), so a server serving the bundle sees them at its next search."""

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
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry, TextEntry, ids_matching
from clipsearch.store.bundle import Bundle
from clipsearch.store.collection import Collection
from clipsearch.store.filters import parse_filter
from clipsearch.store.live import LiveLog
from indexer.cli import bundle_encoder, describe_error, on_live_bundle

Result = TypeVar("Result")


def run_add(args: argparse.Namespace) -> int:
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


def run_delete(args: argparse.Namespace) -> int:
    """Deletes need no model: the ids go straight to the live log."""
    try:
        filter = parse_filter(json.loads(args.filter), "filter") if args.filter is not None else None

        def delete(bundle: Bundle, live: LiveLog) -> list[int]:
            if filter is not None:
                return live.delete(ids_matching(Collection(bundle, live), filter))
            if args.keys is not None:
                found = (live.id_of(Modality(args.modality), key) for key in args.keys)
                return live.delete([item_id for item_id in found if item_id is not None])
            return live.delete(args.ids)

        deleted = on_live_bundle(args.bundle, None, delete)
    except json.JSONDecodeError as error:
        print(f"error: --filter: not valid JSON ({error})", file=sys.stderr)
        return 2
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(json.dumps({"deleted": deleted}))
    return 0


def _with_writer(args: argparse.Namespace, write: Callable[[CollectionWriter], Result], encoder: ClipEncoder) -> Result:
    """Run `write` with a writer over the bundle (again on the new bundle if a compaction swapped it
    in meanwhile). One command is one write, of any size."""

    def on(bundle: Bundle, live: LiveLog) -> Result:
        service = SearchService(encoder, bundle, live=live)
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

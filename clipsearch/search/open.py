"""Opening a bundle to search and write it: the bundle, its live log and a service over both.

The server's workers, the indexer's live commands (add, delete, sync, compact) and the tests all
open bundles through these few functions, so a bundle is opened and closed one way only.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from clipsearch.errors import BundleReplaced
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog
from clipsearch.store.manifest import check_model

LIVE_ATTEMPTS = 3
"""Times a write runs in all when the bundle is compacted or rebuilt under it."""

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def open_live_log(bundle: Bundle, dim: int | None = None) -> LiveLog:
    """The bundle's live log, created on first use; its vectors have `dim` (default the bundle's)."""
    return LiveLog(bundle.path / LIVE_FILE, bundle.items, dim or bundle.manifest.embedding_dim)


def open_service(encoder: ClipEncoder, path: Path, *, verify_checksums: bool = True,
                 on_read_only: Callable[[str], None] | None = None, **options: Any) -> SearchService:
    """A service over the bundle at `path` and its live log; `options` go to SearchService. The
    bundle must have been built with `encoder`'s model (ModelMismatch otherwise).

    A live log that cannot be opened for writing (a read-only directory: OSError, sqlite3.Error)
    raises, unless `on_read_only` is given: then it is told why, and the bundle is served as built."""
    bundle = load_bundle(path, verify_checksums=verify_checksums)
    try:
        check_model(bundle.manifest, encoder.ref, encoder.embedding_dim)
        try:
            live: LiveLog | None = open_live_log(bundle, encoder.embedding_dim)
        except (OSError, sqlite3.Error) as error:
            if on_read_only is None:
                raise
            on_read_only(f"its live log {bundle.path / LIVE_FILE} cannot be opened for writing ({error})")
            live = None
        return SearchService(encoder, bundle, live=live, **options)
    except BaseException:
        bundle.close()
        raise


def close_service(service: SearchService) -> None:
    """Close the service, then its live log and its bundle."""
    service.close()
    if service.collection.live is not None:
        service.collection.live.close()
    service.bundle.close()


@contextmanager
def opened_service(encoder: ClipEncoder, path: Path, **options: Any) -> Iterator[SearchService]:
    service = open_service(encoder, path, **options)
    try:
        yield service
    finally:
        close_service(service)


def on_live_bundle(path: Path, dim: int | None, work: Callable[[Bundle, LiveLog], Result],
                   on_retry: Callable[[], None] | None = None) -> Result:
    """`work(bundle, log)` on the bundle at `path` and its live log (vectors of `dim`, default the
    bundle's). A write that finds the bundle compacted or rebuilt under it (BundleReplaced) wrote
    nothing; the work runs again on the new bundle, after `on_retry()`, up to LIVE_ATTEMPTS times."""
    for attempt in range(1, LIVE_ATTEMPTS + 1):
        bundle = load_bundle(path)
        live = open_live_log(bundle, dim)
        try:
            return work(bundle, live)
        except BundleReplaced:
            if attempt == LIVE_ATTEMPTS:
                raise
            if on_retry is not None:
                on_retry()
        finally:
            live.close()
            bundle.close()
    raise AssertionError("unreachable: the last attempt returns or raises")

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

from clipsearch.errors import BundleReplaced, ModelLoadError, StorageError
from clipsearch.model.audio import AudioEncoder, load_audio_encoder
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.live import LIVE_FILE, LOCK_TIMEOUT_S, LiveLog
from clipsearch.store.manifest import Manifest, check_audio_model, check_model

LIVE_ATTEMPTS = 3
"""Times a write runs in all when the bundle is compacted or rebuilt under it."""

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def open_live_log(bundle: Bundle, dim: int | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S) -> LiveLog:
    """The bundle's live log, created on first use; its vectors have `dim` (default the bundle's),
    and a write waits up to `lock_timeout_s` for the bundle's lock."""
    return LiveLog(bundle.path / LIVE_FILE, bundle.items, dim or bundle.manifest.embedding_dim, lock_timeout_s)


def open_service(encoder: ClipEncoder, path: Path, *, verify_checksums: bool = True,
                 on_read_only: Callable[[str], None] | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S,
                 audio_models: Callable[[str], AudioEncoder] | None = None, **options: Any) -> SearchService:
    """A service over the bundle at `path` and its live log; `options` go to SearchService. The
    bundle must have been built with `encoder`'s model (ModelMismatch otherwise); a bundle with
    sounds opens with the audio model its manifest names, from `audio_models` (a name → the encoder,
    loaded once by the caller), else loaded here on `encoder`'s device. An audio model that cannot be
    loaded (the [audio] extra missing, say) leaves the rest served: its sounds' searches say why.

    A live log that cannot be opened for writing (a read-only directory or a full disk: OSError,
    sqlite3.Error, StorageError) raises, unless `on_read_only` is given: then it is told why, and
    the bundle is served with its live changes read from the log where it can be read, else as built."""
    bundle = load_bundle(path, verify_checksums=verify_checksums)
    try:
        check_model(bundle.manifest, encoder.ref, encoder.embedding_dim)
        try:
            audio = audio_model_of(bundle.manifest, encoder, audio_models)
        except ModelLoadError as error:  # the rest is served; searches and writes of sounds say why not
            log.warning("%s: its sounds cannot be searched: %s", path, error.reason)
            audio, options["audio_problem"] = None, error.reason
        try:
            live: LiveLog | None = open_live_log(bundle, encoder.embedding_dim, lock_timeout_s)
        except (OSError, sqlite3.Error, StorageError) as error:
            if on_read_only is None:
                raise
            live = _read_only_log(bundle, encoder.embedding_dim)
            served = "its live changes are served, read-only" if live is not None else "it is served as built"
            on_read_only(f"its live log {bundle.path / LIVE_FILE} cannot be opened for writing ({error}); {served}")
        return SearchService(encoder, bundle, live=live, audio=audio, **options)
    except BaseException:
        bundle.close()
        raise


def audio_model_of(manifest: Manifest, encoder: ClipEncoder,
                   audio_models: Callable[[str], AudioEncoder] | None = None) -> AudioEncoder | None:
    """The audio model a bundle's sounds were embedded by (None for a bundle without sounds): from
    `audio_models` when given, else loaded on `encoder`'s device; ModelMismatch if it is not that one."""
    if manifest.audio is None:
        return None
    name = str(manifest.audio["model"])
    audio = audio_models(name) if audio_models is not None else load_audio_encoder(name, str(encoder.device))
    check_audio_model(manifest, audio.ref.name, audio.embedding_dim)
    return audio


def _read_only_log(bundle: Bundle, dim: int) -> LiveLog | None:
    try:
        return LiveLog(bundle.path / LIVE_FILE, bundle.items, dim, writable=False)
    except sqlite3.Error as error:
        log.warning("%s: the live log cannot be read either: %s", bundle.path, error)
        return None


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

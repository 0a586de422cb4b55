"""Search services over a bundle with its live log, as a server worker opens them, for the tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipsearch.config import QueryLimits
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog


def private_copy(source: Path, folder: Path) -> Path:
    """A copy of the bundle at `source` in `folder`: live writes land beside it, not in a shared one."""
    return Path(shutil.copytree(source, folder / "bundle"))


def open_live_service(encoder: ClipEncoder, path: Path, limits: QueryLimits | None = None) -> SearchService:
    bundle = load_bundle(path)
    return SearchService(encoder, bundle, limits, live=LiveLog(path / LIVE_FILE, bundle.items, encoder.embedding_dim))


def close_live_service(service: SearchService) -> None:
    service.close()
    if service.collection.live is not None:
        service.collection.live.close()
    service.bundle.close()


@contextmanager
def live_service(encoder: ClipEncoder, path: Path) -> Iterator[SearchService]:
    service = open_live_service(encoder, path)
    try:
        yield service
    finally:
        close_live_service(service)

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clipsearch.config import Batching, QueryLimits
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle

LIMITS = QueryLimits(max_k=20, max_offset=50, max_explained=3)
"""Small limits, so that the tests can reach them."""


@pytest.fixture()
def service(encoder: ClipEncoder, bundle: Bundle) -> Iterator[SearchService]:
    """A service over the session's bundle, without a live log."""
    opened = SearchService(encoder, bundle, LIMITS)
    yield opened
    opened.close()


@pytest.fixture()
def batching_service(encoder: ClipEncoder, bundle: Bundle) -> Iterator[SearchService]:
    # A wide window, so that queries sent together are sure to share batches.
    opened = SearchService(encoder, bundle, LIMITS, batching=Batching(max_batch=64, window_s=0.3))
    yield opened
    opened.close()

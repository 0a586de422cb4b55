from __future__ import annotations

from collections.abc import Callable, Iterator

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
def batching_service(encoder: ClipEncoder, bundle: Bundle) -> Iterator[Callable[[int], SearchService]]:
    """A service whose batches go as soon as they hold `n` queries: n queries sent together make
    exactly one batch however slow the machine (the minute-long window only bounds a failure)."""
    opened: list[SearchService] = []

    def batching(n: int) -> SearchService:
        opened.append(SearchService(encoder, bundle, LIMITS, batching=Batching(max_batch=n, window_s=60)))
        return opened[-1]

    yield batching
    for service in opened:
        service.close()

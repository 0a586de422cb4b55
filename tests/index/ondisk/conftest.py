from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clipsearch.index import ondisk
from tests.support.ondisk import Built, Closer, build_in, corpus, write_on_disk_bundle


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    ids, vectors, queries = corpus()
    work = tmp_path_factory.mktemp("ondisk")
    files, spec = build_in(work, ids, vectors, queries)
    return Built(ids, vectors, queries, files, spec, work)


@pytest.fixture()
def request_close() -> Iterator[Closer]:
    """Stores opened by a test, closed after it."""
    stores: list[ondisk.VectorStore] = []
    yield stores.append
    for store in stores:
        store.close()


@pytest.fixture(scope="module")
def on_disk_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("on-disk-bundle")
    return write_on_disk_bundle(folder / "bundle", folder / "work")

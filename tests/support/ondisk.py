"""On-disk IVF-PQ indices for the tests: clustered vectors with a modality gap
(clipsearch.util.synthetic.ClusteredEmbeddings: uniform random vectors say nothing about IVF
recall), built in three fill shards, and bundles over them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch.config import ModelRef
from clipsearch.index import ondisk
from clipsearch.index.ondisk import passes
from clipsearch.index.spec import IndexSpec
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.store.bundle import ModalityContent, load_bundle, write_bundle
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from clipsearch.util.synthetic import ClusteredEmbeddings

DIM = 32  # the tiny model's, so that a search service can serve these bundles
COUNT = 12_000
FACTORY = "IVF32,PQ8"
FILL_SHARD = 5_000  # three fill shards, the last one short

Closer = Callable[["ondisk.VectorStore"], None]
"""Closes a store after the test (the request_close fixture)."""


@dataclass
class Built:
    ids: np.ndarray
    vectors: np.ndarray
    queries: np.ndarray
    files: ondisk.OnDiskFiles
    spec: IndexSpec
    work: Path


def corpus() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = ClusteredEmbeddings(DIM, clusters=64, seed=3)
    ids = np.arange(COUNT, dtype=np.int64) * 3 + 7  # ids with gaps, as a deduplicated build has
    return ids, data.rows("image", 0, COUNT), data.rows("text", 0, 300)


def chunks_of(ids: np.ndarray, vectors: np.ndarray, size: int = 2_048) -> ondisk.Chunks:
    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return ((ids[start:start + size], vectors[start:start + size]) for start in range(0, len(ids), size))
    return chunks


def build_in(work: Path, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray | None,
             chunks: ondisk.Chunks | None = None) -> tuple[ondisk.OnDiskFiles, IndexSpec]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "FILL_SHARD_VECTORS", FILL_SHARD)  # every step reads it from there
        return ondisk.build_on_disk(chunks or chunks_of(ids, vectors), len(ids), DIM, FACTORY, work, "image",
                                    queries, "text (cross-modal)")


def recall_at_10(found: TopK, truth: TopK) -> float:
    return sum(len(np.intersect1d(row, expected)) for row, expected in zip(found.ids, truth.ids, strict=True)) \
        / truth.ids.size


def write_on_disk_bundle(path: Path, work: Path) -> Path:
    """A bundle of COUNT image items whose index is on disk; item n has metadata {"n": n}."""
    ids, vectors, queries = corpus()
    files, spec = build_in(work, ids, vectors, queries)
    items = [Item(int(item_id), Modality.IMAGE, f"img/{item_id}", None, {"n": int(item_id)}, f"hash{item_id}")
             for item_id in ids]
    write_bundle(path, ModelRef("tiny", None), DIM, {Modality.IMAGE: ModalityContent(files.index, spec, files)},
                 items, {"skipped": []}, {})
    return path


def change_on_disk_bundle(path: Path) -> dict[int, np.ndarray]:
    """Adds 40 items, replaces 5 base items by key and deletes 20 base items and 2 added ones; returns
    id → vector of every item left, base vectors as the fp16 store holds them."""
    ids, _, _ = corpus()
    data = ClusteredEmbeddings(DIM, clusters=64, seed=3)
    fresh = data.rows("image", COUNT, COUNT + 45)
    bundle = load_bundle(path)
    log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
    try:
        expected = dict(zip(ids.tolist(), bundle.base_vectors(Modality.IMAGE, ids), strict=True))
        added = log.write([NewItem(f"new-{number}", Modality.IMAGE, f"img/new-{number}", None, {"n": -number},
                                   f"hash-new-{number}", fresh[number]) for number in range(40)])
        replaced = log.write([NewItem(f"img/{item_id}", Modality.IMAGE, f"img/{item_id}", None, {"n": 0},
                                      f"hash-again-{item_id}", fresh[40 + number])
                              for number, item_id in enumerate(ids[100:105].tolist())])
        assert replaced == ids[100:105].tolist()  # an upsert keeps its id
        deleted = ids[1_000:1_020].tolist() + added[:2]
        assert log.delete(deleted) == deleted
    finally:
        log.close()
        bundle.close()
    expected.update(zip(added, fresh[:40], strict=True))
    expected.update(zip(replaced, fresh[40:45], strict=True))
    for item_id in deleted:
        del expected[item_id]
    return expected


def centroids_of(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)

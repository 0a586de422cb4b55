"""How an index is searched: one small protocol, and the searchers behind it.

* exact indices: a resident matrix on the model's device (clipsearch.index.exact), or FAISS on the CPU
  when the matrix does not fit there;
* approximate indices: FAISS, on the GPU when faiss-gpu and a GPU are there, behind a lock;
  an on-disk IVF-PQ index (clipsearch.index.ondisk) on the CPU, its candidates re-ranked exactly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np
import torch

from clipsearch.index import faiss_index, ondisk
from clipsearch.index.exact import ExactIndex, RowSubset
from clipsearch.index.sharding import ShardedExactIndex, ShardedRows
from clipsearch.index.topk import TopK

log = logging.getLogger(__name__)

DIRECT_MAX_IDS = 65_536
"""A filtered FAISS search over at most this many items (and at most an eighth of the index)
reads their stored vectors and scores them all: exact, and faster than an IVF scan that skips
most of what it visits."""

GPU_MAX_K = 2048
"""Most results a FAISS GPU index returns per query; deeper searches (deduplicated pages) use the CPU copy."""


@dataclass(frozen=True, eq=False)
class Allowed:
    """The items a filtered search may return (`ids`, int64 (m,), ascending), prepared for one searcher:
    rows of a resident matrix, or a FAISS ID selector. Made once per filter and reused."""

    ids: np.ndarray
    rows: RowSubset | ShardedRows | None = None
    selector: Any = None
    count: int | None = None
    """Set when the items allowed are all but a few (`all_but`): how many there are. `ids` is then
    empty and the selector excludes the few."""
    excluded: Any = None
    """The selector of the few excluded items, kept alive for the selector that negates it."""

    def __len__(self) -> int:
        return len(self.ids) if self.count is None else self.count


class Searcher(Protocol):
    """Top-k by inner product of each row of `queries` (float32, (n, d)), among the `allowed` items
    when given; safe to call from several threads."""

    def allow(self, ids: np.ndarray) -> Allowed: ...

    def allow_all_but(self, hidden: np.ndarray, held: np.ndarray) -> Allowed:
        """Every item of `held` (int64, ascending: all the index holds) but the `hidden` ones."""
        ...

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None) -> TopK: ...

    def close(self) -> None: ...


class ExactSearcher:
    """A Flat index held as one matrix on `device` (or split across several devices,
    clipsearch.index.sharding) and searched with one GEMM plus top-k; a filter becomes a mask over its
    rows (FAISS's GPU indices ignore ID selectors, so this is ours)."""

    def __init__(self, index: ExactIndex | ShardedExactIndex) -> None:
        self.index = index

    def allow(self, ids: np.ndarray) -> Allowed:
        if isinstance(self.index, ShardedExactIndex):
            sharded = self.index.subset(ids)
            return Allowed(self.index.ids_of(sharded), rows=sharded)
        rows = self.index.subset(ids)
        return Allowed(self.index.ids_of(rows), rows=rows)

    def allow_all_but(self, hidden: np.ndarray, held: np.ndarray) -> Allowed:
        return self.allow(np.setdiff1d(held, hidden, assume_unique=True))

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None) -> TopK:
        rows = None if allowed is None else allowed.rows
        if isinstance(self.index, ShardedExactIndex):
            assert rows is None or isinstance(rows, ShardedRows)
            return self.index.search(queries, k, rows)
        assert rows is None or isinstance(rows, RowSubset)
        return self.index.search(queries, k, rows)

    def close(self) -> None:
        if isinstance(self.index, ShardedExactIndex):
            self.index.close()

    def like(self, vectors: np.ndarray) -> ExactSearcher:
        """A searcher of other rows (float32 (ntotal, d')) for the same ids, split as this one is, so
        that the items a filter allows here are allowed there too, and scanned in the same precision."""
        if isinstance(self.index, ShardedExactIndex):
            devices = [shard.device for shard in self.index.shards]
            return ExactSearcher(ShardedExactIndex(vectors, self.index.row_ids, devices,
                                                   self.index.shards[0].scan_dtype))
        return ExactSearcher(ExactIndex(vectors, self.index.row_ids, self.index.device, self.index.scan_dtype))


class FaissSearcher:
    """A FAISS index searched by FAISS, one search at a time.

    A FAISS GPU index must not be searched from two threads at once (its resources are not
    thread-safe), and text, image and composed batches search from threads of their own. Filtered
    searches run on `cpu_index` (the same index when it is on the CPU), because FAISS's GPU
    indices ignore ID selectors.

    With a `store` (an on-disk index's fp16 vectors), `rerank`·k candidates are taken and scored
    exactly, and a filter's few allowed items are scored from the store.
    """

    def __init__(self, index: faiss.Index, cpu_index: faiss.Index | None = None,
                 store: ondisk.VectorStore | None = None, rerank: int = 1) -> None:
        self.index = index
        self.cpu_index = index if cpu_index is None else cpu_index
        self.store = store
        self.rerank = rerank
        self._lock = threading.Lock()

    def allow(self, ids: np.ndarray) -> Allowed:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        return Allowed(ids, selector=None if self._direct(len(ids)) else faiss_index.selector(ids))

    def allow_all_but(self, hidden: np.ndarray, held: np.ndarray) -> Allowed:
        """A selector that excludes the few `hidden` items, rather than one that lists all the
        others: at 5M items, a hash set of every id would take seconds to build and hundreds of
        megabytes for each count of deletions cached."""
        positions = np.minimum(np.searchsorted(held, hidden), max(0, len(held) - 1))
        count = len(held) - int(np.count_nonzero(held[positions] == hidden)) if len(held) else 0
        if count <= min(DIRECT_MAX_IDS, self.cpu_index.ntotal // 8):
            return self.allow(np.setdiff1d(held, hidden, assume_unique=True))
        excluded = faiss_index.selector(hidden)
        return Allowed(np.zeros(0, np.int64), selector=faiss.IDSelectorNot(excluded), count=count, excluded=excluded)

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None) -> TopK:
        if allowed is not None and allowed.selector is None:
            vectors = self.store.vectors_of(allowed.ids) if self.store is not None else \
                faiss_index.reconstruct_many(self.cpu_index, allowed.ids)
            return _score_all(vectors, allowed.ids, queries, k)
        depth = k * self.rerank if self.store is not None else k
        with self._lock:
            if allowed is None:
                found = faiss_index.search(self.index if depth <= GPU_MAX_K else self.cpu_index, queries, depth)
            else:
                found = faiss_index.search(self.cpu_index, queries, depth, allowed.selector,
                                           fraction=len(allowed) / max(1, self.cpu_index.ntotal))
        if self.store is not None and depth > k:
            return self.store.rerank(queries, found, k)
        return found

    def close(self) -> None:
        """Nothing to release: the index belongs to the bundle."""

    def _direct(self, count: int) -> bool:
        return count <= min(DIRECT_MAX_IDS, self.cpu_index.ntotal // 8)


def _score_all(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> TopK:
    """Exact top-k of `queries` (n, d) over `vectors` (m, d) keyed by `ids` (m,)."""
    k = min(k, len(ids))
    if k == 0:
        return TopK.empty(len(queries))
    scores = np.ascontiguousarray(queries, dtype=np.float32) @ vectors.T
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    return TopK(np.take_along_axis(scores, best, axis=1).astype(np.float32), ids[best])


def searcher_for(index: faiss.Index, exact: bool, devices: Sequence[torch.device], use_gpu: bool,
                 store: ondisk.VectorStore | None = None, rerank: int = 1) -> Searcher:
    """The fastest searcher that gives `index`'s own answer on `devices` (several: the index is
    split across them, clipsearch.index.sharding). An on-disk index (given with its `store`) stays on
    the CPU: a GPU copy would need its codes in GPU memory, which is what on-disk avoids."""
    if store is not None:
        return FaissSearcher(index, store=store, rerank=rerank)
    if exact and index.ntotal > 0:
        try:
            if len(devices) > 1:
                return ExactSearcher(ShardedExactIndex.from_faiss(index, devices))
            return ExactSearcher(ExactIndex.from_faiss(index, devices[0]))
        except torch.OutOfMemoryError:
            # Six bytes per dimension per item must fit on the GPUs; when they do not, FAISS on the
            # CPU still answers exactly, only slower.
            log.warning("the exact index (%d vectors) does not fit on %s; searching it with FAISS on the CPU",
                        index.ntotal, ", ".join(map(str, devices)))
            return FaissSearcher(index)
    if not use_gpu:
        return FaissSearcher(index)
    gpus = [device.index or 0 for device in devices if device.type == "cuda"]
    return FaissSearcher(faiss_index.to_gpus(index, gpus or [0]), cpu_index=index)

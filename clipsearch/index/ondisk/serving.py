"""Serving an on-disk index: opened read-only, its candidates re-ranked exactly from the fp16 store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipsearch.errors import BundleError
from clipsearch.index.topk import TopK

RERANK_QUERIES_AT_ONCE = 64
"""Queries re-ranked together: 64 queries of 800 candidates read 100 MB of float32 rows at 512-d."""
_NO_SCORE = -np.finfo(np.float32).max  # what FAISS scores a missing result with


class VectorStore:
    """Unit vectors at half precision by ascending item id, in a .npy file read row by row as
    queries need them (the re-rank of an on-disk index, and its stored vectors), with their ids
    memory-mapped from another.

    The rows are read with pread, not through a memory map: the kernel maps whole page-cache
    folios on each fault (hundreds of kilobytes here, whatever madvise says), so 800 scattered rows
    read through a map put 400 MB of a 1 GB store into the process's resident set, while pread
    leaves the cache to the kernel and the resident set alone."""

    def __init__(self, vectors_path: Path, ids_path: Path) -> None:
        self.ids = np.load(ids_path, mmap_mode="r")
        with open(vectors_path, "rb") as header:
            version = np.lib.format.read_magic(header)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(header)
            self._offset = header.tell()
        if len(shape) != 2 or fortran_order or dtype != np.float16 or shape[0] != len(self.ids):
            raise BundleError(f"{vectors_path.name}: holds {shape} {dtype} vectors for the {len(self.ids)} ids "
                              f"of {ids_path.name}; an on-disk index's store is (ids, dim) float16")
        self.count, self.dim = int(shape[0]), int(shape[1])
        self._row_bytes = self.dim * 2
        self._file = open(vectors_path, "rb", buffering=0)  # noqa: SIM115  # read for the store's life

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `ids` (int64 (m,)) and whether each is held at all."""
        if len(self.ids) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return rows, np.asarray(self.ids[rows]) == ids

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The vectors (float32 (m, d)) of `ids`, which must all be held."""
        rows, held = self.positions(np.asarray(ids, dtype=np.int64))
        if not held.all():
            raise KeyError(f"no stored vector for ids {np.asarray(ids)[~held][:5].tolist()}")
        return self._read_rows(rows)

    def vector(self, item_id: int) -> np.ndarray | None:
        rows, held = self.positions(np.array([item_id], np.int64))
        return self._read_rows(rows)[0] if held[0] else None

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows `start` to `stop` (float32), read in one call: a compaction's pass over the store."""
        size = (stop - start) * self._row_bytes
        raw = os.pread(self._file.fileno(), size, self._offset + start * self._row_bytes)
        if len(raw) != size:
            raise BundleError(f"the fp16 store ends before row {stop}: it was truncated")
        return np.frombuffer(raw, np.float16).reshape(stop - start, self.dim).astype(np.float32)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")  # in file order, kinder to the disk
        descriptor, size = self._file.fileno(), self._row_bytes
        raw = b"".join(os.pread(descriptor, size, self._offset + int(row) * size) for row in rows[order])
        vectors = np.empty((len(rows), self.dim), np.float32)
        vectors[order] = np.frombuffer(raw, np.float16).reshape(len(rows), self.dim)
        return vectors

    def rerank(self, queries: np.ndarray, candidates: TopK, k: int) -> TopK:
        """The best `k` of each row of `candidates`, scored exactly against the stored vectors."""
        if len(queries) > RERANK_QUERIES_AT_ONCE:  # each query's candidates are read as float32 rows
            parts = [self.rerank(queries[start:start + RERANK_QUERIES_AT_ONCE],
                                 TopK(candidates.scores[start:start + RERANK_QUERIES_AT_ONCE],
                                      candidates.ids[start:start + RERANK_QUERIES_AT_ONCE]), k)
                     for start in range(0, len(queries), RERANK_QUERIES_AT_ONCE)]
            return TopK(np.concatenate([part.scores for part in parts]), np.concatenate([part.ids for part in parts]))
        ids = candidates.ids
        valid = ids >= 0
        unique, inverse = np.unique(ids[valid], return_inverse=True)
        rows = self.vectors_of(unique)
        scores = np.full(ids.shape, _NO_SCORE, np.float32)
        query_rows = np.nonzero(valid)[0]
        scores[valid] = np.einsum("ij,ij->i", np.asarray(queries, np.float32)[query_rows], rows[inverse])
        k = min(k, ids.shape[1])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_ids = np.take_along_axis(np.where(valid, ids, -1), best, axis=1)
        return TopK(np.take_along_axis(scores, best, axis=1), best_ids)


def search(index: faiss.Index, store: VectorStore | None, queries: np.ndarray, k: int, rerank: int,
           params: Any = None) -> TopK:
    """Top-k from an on-disk index: `k·rerank` candidates re-ranked exactly from `store`, or its
    own top k when there is no store (or `rerank` is 1)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = k * rerank if store is not None and rerank > 1 else k
    depth = min(depth, index.ntotal)
    if depth == 0:
        return TopK.empty(len(queries))
    scores, ids = index.search(queries, depth, params=params)
    found = TopK(scores, ids)
    return store.rerank(queries, found, k) if depth > k and store is not None else found


def load(path: Path) -> faiss.Index:
    """Open an on-disk index read-only; its `.ivfdata` file is found beside it, whatever the path
    it was written at."""
    return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)

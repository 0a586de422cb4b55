"""The passes over the vectors that write an on-disk index's files, shared by a build and a refill:
the first pass (the fp16 store, the training sample, the recall queries' exact top 10), then fill
shards of the trained index, merged into one `.ivfdata` file with FAISS's merge_ondisk."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from clipsearch.index.spec import RECALL_QUERIES
from clipsearch.util.files import atomic_path
from clipsearch.util.progress import progress_bar

FILL_SHARD_VECTORS = 1_000_000
"""Vectors per fill shard: its codes (72 bytes a vector for PQ64) are held in memory until written."""
Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""Returns a fresh pass over the vectors: (ids int64 (c,), vectors float32 (c, d)) in ascending id order."""


@dataclass(frozen=True)
class OnDiskFiles:
    """What a build leaves in its work directory for the bundle: the index (its lists in `ivfdata`),
    the fp16 vectors and their ids (ascending)."""

    index: faiss.Index
    ivfdata: Path
    vectors: Path
    ids: Path
    seconds: dict[str, float] = field(default_factory=dict, compare=False)
    """How long each step took: first_pass, train, fill, merge, tune."""


class Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = now - self._since
        self._since = now


def prepare_work(work: Path, settings: dict[str, Any]) -> None:
    """Keep `work` from an interrupted build of the same settings; otherwise start it empty."""
    recorded = work / "settings.json"
    if recorded.is_file() and json.loads(recorded.read_text()) == settings:
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    recorded.write_text(json.dumps(settings))


@dataclass
class FirstPass:
    sample: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    """Ids (int64 (m, 10)) of each query's exact top 10."""


def first_pass(chunks: Chunks, count: int, dim: int, work: Path, name: str, sample_size: int,
                recall_queries: np.ndarray | None, progress: bool, find_truth: bool = True) -> FirstPass:
    """Draw the training sample, write the fp16 store, and find the recall queries' exact top 10
    (unless not `find_truth`: a refill is not tuned).

    Without recall queries of another modality, the first RECALL_QUERIES of the sample are used.
    """
    chosen = np.sort(np.random.default_rng(1234).choice(count, size=sample_size, replace=False))
    sample = np.empty((sample_size, dim), np.float32)
    queries = None if not find_truth or recall_queries is None or len(recall_queries) == 0 else \
        np.ascontiguousarray(recall_queries[:RECALL_QUERIES], dtype=np.float32)
    best = RunningTopK(10)
    start, last_id = 0, -1
    bar = progress_bar(total=count, unit="vector", desc="reading vectors", disable=not progress, dynamic_ncols=True)
    with RowWriter(work / f"{name}.vectors.npy.tmp", np.float16, (count, dim)) as vectors, \
            RowWriter(work / f"{name}.ids.npy.tmp", np.int64, (count,)) as ids:
        for chunk_ids, chunk_vectors in chunks():
            end = start + len(chunk_ids)
            if end > count:
                raise ValueError(f"the vectors number more than the {count} announced")
            if len(chunk_ids) and (chunk_ids[0] <= last_id or np.any(np.diff(chunk_ids) <= 0)):
                raise ValueError("the vectors' ids must ascend across chunks")
            vectors.write(chunk_vectors)
            ids.write(chunk_ids)
            last_id = int(chunk_ids[-1]) if len(chunk_ids) else last_id
            in_chunk = chosen[(chosen >= start) & (chosen < end)]
            sample[np.searchsorted(chosen, in_chunk)] = chunk_vectors[in_chunk - start]
            if queries is not None:
                best.add(queries, chunk_ids, chunk_vectors)
            start = end
            bar.update(len(chunk_ids))
        bar.close()
        if start != count:
            raise ValueError(f"{start} vectors came, {count} were announced")
        vectors.finish()
        ids.finish()
    for suffix in ("vectors.npy", "ids.npy"):
        (work / f"{name}.{suffix}.tmp").replace(work / f"{name}.{suffix}")
    if not find_truth:
        return FirstPass(sample, np.zeros((0, dim), np.float32), np.zeros((0, 10), np.int64))
    if queries is None:  # the queries come from the sample, known only now: one more pass for their truth
        queries = np.ascontiguousarray(sample[:RECALL_QUERIES])
        for chunk_ids, chunk_vectors in chunks():
            best.add(queries, chunk_ids, chunk_vectors)
    return FirstPass(sample, queries, best.ids)


class RowWriter:
    """A .npy file of known shape written row by row, in order, with plain writes: through a memory
    map, the pages written would count in the process's resident memory (a build's, a
    compaction's) until the kernel wrote them back."""

    def __init__(self, path: Path, dtype: type[np.generic], shape: tuple[int, ...]) -> None:
        self.dtype, self.shape = np.dtype(dtype), shape
        self._file = open(path, "wb")  # noqa: SIM115  # closed by finish(), or on leaving the with block
        np.lib.format.write_array_header_2_0(self._file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                          "fortran_order": False, "shape": shape})
        self._rows = 0

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def write(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self._rows += len(rows)

    def finish(self) -> None:
        """Flush every row to disk and close; there must be as many as the shape says."""
        if self._rows != self.shape[0]:
            raise ValueError(f"{self._file.name}: {self._rows} rows written, {self.shape[0]} announced")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class RunningTopK:
    """The exact top k of fixed queries over vectors seen chunk by chunk."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores: np.ndarray | None = None
        self.ids = np.zeros((0, k), np.int64)

    def add(self, queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        scores = queries @ np.asarray(vectors, np.float32).T
        candidate_ids = np.broadcast_to(ids, scores.shape)
        if self.scores is not None:
            scores = np.concatenate([self.scores, scores], axis=1)
            candidate_ids = np.concatenate([self.ids, candidate_ids], axis=1)
        k = min(self.k, scores.shape[1])
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        self.scores = np.take_along_axis(scores, best, axis=1)
        self.ids = np.take_along_axis(candidate_ids, best, axis=1)


def fill_and_merge(chunks: Chunks, count: int, trained_path: Path, work: Path, name: str, clock: Clock,
                    progress: bool) -> OnDiskFiles:
    """Steps 3 and 4 of a build: fill shards of the trained index, then merge their lists on disk."""
    shard_paths = fill(chunks, count, trained_path, work, progress)
    clock.lap("fill")
    merged = faiss.read_index(str(trained_path))
    ivfdata = work / f"{name}.ivfdata"
    ivfdata.unlink(missing_ok=True)
    merge_ondisk(merged, [str(path) for path in shard_paths], str(ivfdata))
    clock.lap("merge")
    return OnDiskFiles(merged, ivfdata, work / f"{name}.vectors.npy", work / f"{name}.ids.npy", clock.seconds)


def fill(chunks: Chunks, count: int, trained_path: Path, work: Path, progress: bool) -> list[Path]:
    """Add the vectors to copies of the trained index, FILL_SHARD_VECTORS at a time, each written
    to its own file; shards already written by an interrupted build are kept."""
    shard_count = -(-count // FILL_SHARD_VECTORS)
    paths = [work / f"fill-{number:05d}.faiss" for number in range(shard_count)]
    done = 0
    while done < shard_count and paths[done].is_file():
        done += 1
    start_at = done * FILL_SHARD_VECTORS
    bar = progress_bar(total=count, initial=start_at, unit="vector", desc="filling lists", disable=not progress,
                       dynamic_ncols=True)
    shard: faiss.Index | None = None
    position = 0
    for chunk_ids, chunk_vectors in chunks():
        chunk_end = position + len(chunk_ids)
        while position < chunk_end:
            number = position // FILL_SHARD_VECTORS
            take = min(chunk_end, (number + 1) * FILL_SHARD_VECTORS) - position
            if number >= done:
                if shard is None:
                    shard = faiss.read_index(str(trained_path))
                offset = position - (chunk_end - len(chunk_ids))
                shard.add_with_ids(np.ascontiguousarray(chunk_vectors[offset:offset + take], dtype=np.float32),
                                   np.ascontiguousarray(chunk_ids[offset:offset + take], dtype=np.int64))
                bar.update(take)
            position += take
            if position % FILL_SHARD_VECTORS == 0 or position == count:
                if shard is not None:
                    with atomic_path(paths[number]) as temporary:
                        faiss.write_index(shard, str(temporary))
                shard = None
    bar.close()
    return paths

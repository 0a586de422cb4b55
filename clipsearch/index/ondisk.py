"""Indices larger than memory: IVF-PQ with its inverted lists in a file on disk, and every vector at
half precision on disk beside it for an exact re-rank of the candidates.

A build goes as FAISS's own recipe does (faiss/contrib/ondisk.py, whose merge_ondisk it calls):

1. a first pass over the vectors draws the training sample (fixed seed), writes the fp16 store,
   and keeps the exact top 10 of the recall queries;
2. the IVF-PQ is trained on the sample;
3. fill shards: copies of the trained index each take a run of consecutive vectors and are
   written to files of their own, so a build that dies resumes after the last shard written;
4. their inverted lists are merged into one `.ivfdata` file (OnDiskInvertedLists);
5. nprobe and the candidates re-ranked per result are chosen, as they are served, so that
   recall@10 against exact search reaches the target (_tune).

Served read-only: FAISS maps the `.ivfdata` file itself, and the re-rank reads its rows of the
fp16 store with pread, so a server's own memory is the coarse quantizer, the PQ tables and the
list pages its searches touch, not the index. (FAISS's IO_FLAG_MMAP must not be added for such an
index: with it, FAISS 1.15 crashed here on the first search.) Nothing here holds all the vectors
in memory at once: they come in chunks, twice.

A compaction (clipsearch.store.compaction) reads the store back a block at a time, merged with the live
vectors (`chunks_from_store`), and fills the trained index again (`emptied`, `refill_on_disk`:
steps 1, 3 and 4 without the sample, the training and the tuning), or builds it again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk
from tqdm import tqdm

from clipsearch.errors import BundleError, IndexSettingsInvalid
from clipsearch.index.spec import DEFAULT_RERANK, RECALL_QUERIES, RECALL_TARGET, TRAINING_POINTS_PER_LIST, IndexSpec
from clipsearch.index.topk import TopK
from clipsearch.util.files import atomic_path

FILL_SHARD_VECTORS = 1_000_000
"""Vectors per fill shard: its codes (72 bytes a vector for PQ64) are held in memory until written."""
RERANK_QUERIES_AT_ONCE = 64
"""Queries re-ranked together: 64 queries of 800 candidates read 100 MB of float32 rows at 512-d."""
MAX_RERANK_STEPS = 3
"""Doublings of the re-rank depth the tuning may take (10 → 80 candidates per result)."""
STORE_ROWS_AT_ONCE = 16_384
"""Rows of the fp16 store a compaction reads at a time: 32 MB as float32 at 512-d, copied a few
times on its way into the lists."""
MIN_TRAINING_POINTS = 64 * 256
"""PQ's sub-quantizers have 256 centroids each, and FAISS asks for at least 39 points per centroid."""

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""Returns a fresh pass over the vectors: (ids int64 (c,), vectors float32 (c, d)) in ascending id order."""

_NO_SCORE = -np.finfo(np.float32).max  # what FAISS scores a missing result with

log = logging.getLogger(__name__)


def is_on_disk_factory(factory: str) -> bool:
    """Whether `factory` makes an index built and served on disk: an IVF with PQ codes (possibly
    after a transform such as OPQ), e.g. 'IVF65536,PQ64'. Fast-scan PQ ('PQ32x4fs') keeps its
    lists in blocks FAISS cannot put on disk, so it is built in memory as before."""
    parts = [part.strip() for part in factory.split(",")]
    coarse = any(re.fullmatch(r"IVF\d+", part) for part in parts[:-1])
    return coarse and re.fullmatch(r"PQ\d+(x\d+)?", parts[-1]) is not None


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


def build_on_disk(chunks: Chunks, count: int, dim: int, factory: str, work: Path, name: str,
                  recall_queries: np.ndarray | None = None, queries_label: str | None = None,
                  rerank: int = DEFAULT_RERANK, progress: bool = False) -> tuple[OnDiskFiles, IndexSpec]:
    """Build an on-disk IVF-PQ index of `count` vectors in `work` (kept across a crash, for resuming;
    the caller removes it once the files are moved out). The files are named `name`.ivfdata,
    `name`.vectors.npy and `name`.ids.npy, as the bundle keeps them."""
    index = _new_index(dim, factory)
    ivf = faiss.extract_index_ivf(index)
    if count < ivf.nlist:
        raise IndexSettingsInvalid(f"index factory {factory!r} asks for {ivf.nlist} lists but there are only "
                                   f"{count} vectors; use fewer lists or an in-memory index")
    _prepare_work(work, {"factory": factory, "count": count, "dim": dim, "fill_shard": FILL_SHARD_VECTORS})
    clock = _Clock()
    sample_size = min(count, max(ivf.nlist * TRAINING_POINTS_PER_LIST, MIN_TRAINING_POINTS))
    first_pass = _first_pass(chunks, count, dim, work, name, sample_size, recall_queries, progress)
    queries, truth = first_pass.queries, first_pass.truth
    if recall_queries is None or len(recall_queries) == 0:
        queries_label = "same modality (no other corpus)"
    clock.lap("first_pass")
    trained_path = work / "trained.faiss"
    if not trained_path.is_file():
        log.info("training %s on %d vectors", factory, len(first_pass.sample))
        index.train(first_pass.sample)
        with atomic_path(trained_path) as temporary:
            faiss.write_index(index, str(temporary))
    clock.lap("train")
    files = _fill_and_merge(chunks, count, trained_path, work, name, clock, progress)
    params: dict[str, Any] = {"nlist": int(ivf.nlist), "trained_on": len(first_pass.sample), "trained_with": count,
                              "on_disk": True, "rerank": rerank}
    with VectorStore(files.vectors, files.ids) as store:
        recall = _tune(files.index, store, queries, truth, rerank, params)
    clock.lap("tune")
    log.info("on-disk index %s: recall@10 %.3f with %s queries, params %s", factory, recall, queries_label, params)
    if recall < RECALL_TARGET:
        ivf_pq: Any = faiss.downcast_index(ivf)
        log.warning("on-disk index %s reaches recall@10 %.3f, below the target %.2f, even with %d candidates per "
                    "result: its codes are too coarse for these vectors; more bytes per vector (PQ%d) would do "
                    "better", factory, recall, RECALL_TARGET, params["rerank"], 2 * ivf_pq.pq.M)
    return files, IndexSpec(factory, exact=False, params=params, recall_at_10=round(recall, 4),
                            recall_queries=queries_label)


def emptied(index_path: Path) -> faiss.Index:
    """The trained on-disk index at `index_path` holding no vectors (its quantizer and codebooks,
    in memory): what `refill_on_disk` fills again."""
    index = load(index_path)
    ivf = faiss.extract_index_ivf(index)
    lists: Any = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now; Python must not free it too
    ivf.ntotal = index.ntotal = 0
    return index


def refill_on_disk(chunks: Chunks, count: int, trained: faiss.Index, work: Path, name: str,
                   progress: bool = False) -> OnDiskFiles:
    """Fill `trained` (an empty trained on-disk index, see `emptied`) with `count` vectors on disk,
    as `build_on_disk` does but with no training and no tuning: a compaction's path while the rows
    added since the index was trained stay few (clipsearch.store.compaction). The caller keeps the
    search settings it had."""
    if trained.ntotal:
        raise ValueError(f"the trained index holds {trained.ntotal} vectors; refill an empty one")
    _prepare_work(work, {"refill": True, "count": count, "dim": trained.d, "fill_shard": FILL_SHARD_VECTORS})
    clock = _Clock()
    _first_pass(chunks, count, trained.d, work, name, sample_size=0, recall_queries=None, progress=progress,
                find_truth=False)
    clock.lap("first_pass")
    trained_path = work / "trained.faiss"
    with atomic_path(trained_path) as temporary:
        faiss.write_index(trained, str(temporary))
    return _fill_and_merge(chunks, count, trained_path, work, name, clock, progress)


def chunks_from_store(store: VectorStore, keep: np.ndarray, added_ids: np.ndarray, added_vectors: np.ndarray,
                      rows_at_once: int = STORE_ROWS_AT_ONCE) -> Chunks:
    """A pass over the rows of `store` where `keep` (bool, one per row) is true, merged in id order
    with `added_ids` (none of them kept ids) and their float32 `added_vectors`: a compaction's new
    base, read `rows_at_once` rows at a time (with pread, so the store never enters the process's
    resident memory)."""
    order = np.argsort(added_ids, kind="stable")
    added_ids, added_vectors = added_ids[order], added_vectors[order]
    ids = store.ids

    def chunks() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        taken = 0
        for start in range(0, len(ids), rows_at_once):
            end = min(start + rows_at_once, len(ids))
            kept = keep[start:end]
            # The added ids below the next block's first id belong to this one.
            upto = len(added_ids) if end == len(ids) else int(np.searchsorted(added_ids, ids[end]))
            chunk_ids, chunk_vectors = np.asarray(ids[start:end]), store.block(start, end)
            if not kept.all():
                chunk_ids, chunk_vectors = chunk_ids[kept], chunk_vectors[kept]
            if upto > taken:
                chunk_ids = np.concatenate([chunk_ids, added_ids[taken:upto]])
                chunk_vectors = np.concatenate([chunk_vectors, added_vectors[taken:upto]])
                in_order = np.argsort(chunk_ids, kind="stable")
                chunk_ids, chunk_vectors = chunk_ids[in_order], chunk_vectors[in_order]
            taken = upto
            if len(chunk_ids):
                yield chunk_ids, chunk_vectors
        if taken < len(added_ids):  # no stored rows at all
            yield added_ids[taken:], added_vectors[taken:]

    return chunks


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = now - self._since
        self._since = now


def _new_index(dim: int, factory: str) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexSettingsInvalid(f"index factory {factory!r} is not valid for FAISS: {error}") from error
    if not is_on_disk_factory(factory):
        raise IndexSettingsInvalid(f"index factory {factory!r} is not an IVF with PQ codes; only those go on disk")
    # The factory asks for polysemous training (codes reordered for Hamming-distance filtering,
    # which these searches never use); it took 90% of the training time on the test corpus.
    ivf_pq: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf_pq.do_polysemous_training = False
    return index


def _prepare_work(work: Path, settings: dict[str, Any]) -> None:
    """Keep `work` from an interrupted build of the same settings; otherwise start it empty."""
    recorded = work / "settings.json"
    if recorded.is_file() and json.loads(recorded.read_text()) == settings:
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    recorded.write_text(json.dumps(settings))


@dataclass
class _FirstPass:
    sample: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    """Ids (int64 (m, 10)) of each query's exact top 10."""


def _first_pass(chunks: Chunks, count: int, dim: int, work: Path, name: str, sample_size: int,
                recall_queries: np.ndarray | None, progress: bool, find_truth: bool = True) -> _FirstPass:
    """Draw the training sample, write the fp16 store, and find the recall queries' exact top 10
    (unless not `find_truth`: a refill is not tuned).

    Without recall queries of another modality, the first RECALL_QUERIES of the sample are used.
    """
    chosen = np.sort(np.random.default_rng(1234).choice(count, size=sample_size, replace=False))
    sample = np.empty((sample_size, dim), np.float32)
    queries = None if not find_truth or recall_queries is None or len(recall_queries) == 0 else \
        np.ascontiguousarray(recall_queries[:RECALL_QUERIES], dtype=np.float32)
    best = _RunningTopK(10)
    start, last_id = 0, -1
    bar = tqdm(total=count, unit="vector", desc="reading vectors", disable=not progress, dynamic_ncols=True)
    with _RowWriter(work / f"{name}.vectors.npy.tmp", np.float16, (count, dim)) as vectors, \
            _RowWriter(work / f"{name}.ids.npy.tmp", np.int64, (count,)) as ids:
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
        return _FirstPass(sample, np.zeros((0, dim), np.float32), np.zeros((0, 10), np.int64))
    if queries is None:  # the queries come from the sample, known only now: one more pass for their truth
        queries = np.ascontiguousarray(sample[:RECALL_QUERIES])
        for chunk_ids, chunk_vectors in chunks():
            best.add(queries, chunk_ids, chunk_vectors)
    return _FirstPass(sample, queries, best.ids)


class _RowWriter:
    """A .npy file of known shape written row by row, in order, with plain writes: through a memory
    map, the pages written would count in the process's resident memory (a build's, a
    compaction's) until the kernel wrote them back."""

    def __init__(self, path: Path, dtype: type[np.generic], shape: tuple[int, ...]) -> None:
        self.dtype, self.shape = np.dtype(dtype), shape
        self._file = open(path, "wb")  # noqa: SIM115  # closed by finish(), or on leaving the with block
        np.lib.format.write_array_header_2_0(self._file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                          "fortran_order": False, "shape": shape})
        self._rows = 0

    def __enter__(self) -> _RowWriter:
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


class _RunningTopK:
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


def _fill_and_merge(chunks: Chunks, count: int, trained_path: Path, work: Path, name: str, clock: _Clock,
                    progress: bool) -> OnDiskFiles:
    """Steps 3 and 4 of a build: fill shards of the trained index, then merge their lists on disk."""
    shard_paths = _fill(chunks, count, trained_path, work, progress)
    clock.lap("fill")
    merged = faiss.read_index(str(trained_path))
    ivfdata = work / f"{name}.ivfdata"
    ivfdata.unlink(missing_ok=True)
    merge_ondisk(merged, [str(path) for path in shard_paths], str(ivfdata))
    clock.lap("merge")
    return OnDiskFiles(merged, ivfdata, work / f"{name}.vectors.npy", work / f"{name}.ids.npy", clock.seconds)


def _fill(chunks: Chunks, count: int, trained_path: Path, work: Path, progress: bool) -> list[Path]:
    """Add the vectors to copies of the trained index, FILL_SHARD_VECTORS at a time, each written
    to its own file; shards already written by an interrupted build are kept."""
    shard_count = -(-count // FILL_SHARD_VECTORS)
    paths = [work / f"fill-{number:05d}.faiss" for number in range(shard_count)]
    done = 0
    while done < shard_count and paths[done].is_file():
        done += 1
    start_at = done * FILL_SHARD_VECTORS
    bar = tqdm(total=count, initial=start_at, unit="vector", desc="filling lists", disable=not progress,
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


def _tune(index: faiss.Index, store: VectorStore, queries: np.ndarray, truth: np.ndarray, rerank: int,
          params: dict[str, Any]) -> float:
    """The fewest lists probed (a power of two) with which recall@10, re-ranked, reaches the target.

    Both the lists probed and the PQ codes limit recall: the lists miss neighbours in lists not
    probed (cross-modal queries spread their neighbours over many: the modality gap), and the
    codes misorder close neighbours, which more candidates in the re-rank make up for. So at each
    nprobe the candidates per result are tried at `rerank` and up to MAX_RERANK_STEPS doublings of
    it, all from one search (a shorter candidate list is a prefix of a longer one), and the first
    nprobe where any reaches the target wins, with the fewest candidates that do: the lists
    scanned cost most at scale. Where nothing reaches the target the best recall found is kept.
    The recall of the codes alone at the chosen nprobe is recorded too, to show what the re-rank
    buys."""
    ivf = faiss.extract_index_ivf(index)
    k = truth.shape[1]
    depths = [rerank] if rerank <= 1 else [rerank << step for step in range(MAX_RERANK_STEPS + 1)]

    def recall(found: TopK) -> float:
        return sum(len(np.intersect1d(row, truth_row))
                   for row, truth_row in zip(found.ids, truth, strict=True)) / truth.size

    best = (-1.0, ivf.nlist, depths[-1], 0.0)  # recall, nprobe, candidates per result, recall of the codes alone
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        scores, ids = index.search(queries, min(k * depths[-1], index.ntotal))
        codes_alone = recall(TopK(scores[:, :k], ids[:, :k]))
        for depth in depths:
            candidates = TopK(scores[:, :k * depth], ids[:, :k * depth])
            reached = recall(store.rerank(queries, candidates, k) if depth > 1 else candidates)
            if reached > best[0]:
                best = (reached, nprobe, depth, codes_alone)
            if reached >= RECALL_TARGET:
                best = (reached, nprobe, depth, codes_alone)
                break
        if best[0] >= RECALL_TARGET or nprobe >= ivf.nlist:
            break
        nprobe = min(nprobe * 2, ivf.nlist)
    reached, nprobe, depth, codes_alone = best
    params["nprobe"], params["rerank"], params["recall_without_rerank"] = nprobe, depth, round(codes_alone, 4)
    ivf.nprobe = nprobe
    return reached

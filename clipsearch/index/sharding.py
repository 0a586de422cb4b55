"""One exact index split across several devices: each holds a contiguous range of the rows, every
search runs on all of them at once, and their top-k lists are merged.

Exact search reads every row once per query, so its time is bound by memory bandwidth: two GPUs
each holding half the matrix answer in about half the time, and hold twice the vectors. Each
shard is an ExactIndex (clipsearch.index.exact) with its own fp16 scan and fp32 rescoring, so each
shard's top k is exact, and so is their merge: the best k of the union of every shard's best k.
On the CPU, several shards on "cpu" give the same answer as one (tested); they exist to test the
merge, not to be faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from clipsearch.errors import ModelLoadError
from clipsearch.index.exact import ExactIndex, RowSubset
from clipsearch.index.topk import TopK


@dataclass(frozen=True, eq=False)
class ShardedRows:
    """The rows a filtered search may return, one RowSubset per shard."""

    shards: tuple[RowSubset, ...]

    def __len__(self) -> int:
        return sum(len(subset) for subset in self.shards)


def parse_devices(text: str, default: torch.device) -> list[torch.device]:
    """Devices from 'cuda:0,cuda:1' ('' or 'all': every visible GPU when `default` is a GPU, else `default`)."""
    if text.strip().lower() in ("", "all"):
        if default.type == "cuda":
            return [torch.device("cuda", number) for number in range(torch.cuda.device_count())]
        return [default]
    try:
        devices = [torch.device(name.strip()) for name in text.split(",") if name.strip()]
    except RuntimeError as error:
        raise ModelLoadError(str(error), "devices") from error
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        if device.type == "cuda" and (device.index or 0) >= visible:
            raise ModelLoadError(f"{device} is not a visible CUDA device ({visible} visible)", "devices")
    return devices


class ShardedExactIndex:
    """Rows split across `devices` in contiguous, nearly equal ranges; the same interface as ExactIndex."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, devices: Sequence[torch.device | str],
                 scan_dtype: torch.dtype | None = None) -> None:
        if not devices:
            raise ValueError("give at least one device")
        self.ntotal, self.dim = vectors.shape
        bounds = np.linspace(0, self.ntotal, len(devices) + 1).round().astype(np.int64)
        self.starts = bounds[:-1]
        self.shards = [ExactIndex(vectors[start:end], ids[start:end], device, scan_dtype)
                       for start, end, device in zip(bounds[:-1], bounds[1:], devices, strict=True)]
        self._ids = np.ascontiguousarray(ids, dtype=np.int64)
        # One thread per shard: each waits on its own device, so the GPUs scan side by side.
        self._pool = ThreadPoolExecutor(len(self.shards), thread_name_prefix="shard") if len(self.shards) > 1 else None

    @classmethod
    def from_faiss(cls, index: faiss.Index, devices: Sequence[torch.device | str],
                   scan_dtype: torch.dtype | None = None) -> ShardedExactIndex:
        whole = ExactIndex.from_faiss(index, "cpu", torch.float32)  # a view of FAISS's memory on the CPU
        return cls(whole.vectors(), whole.row_ids, devices, scan_dtype)

    @property
    def row_ids(self) -> np.ndarray:
        return self._ids

    @property
    def rescans(self) -> int:
        return sum(shard.rescans for shard in self.shards)

    def vectors(self) -> np.ndarray:
        return np.concatenate([shard.vectors() for shard in self.shards])

    def subset(self, ids: np.ndarray) -> ShardedRows:
        return ShardedRows(tuple(shard.subset(ids) for shard in self.shards))

    def ids_of(self, subset: ShardedRows) -> np.ndarray:
        return np.sort(np.concatenate([shard.ids_of(rows) for shard, rows in zip(self.shards, subset.shards,
                                                                                    strict=True)]))

    def search(self, queries: np.ndarray, k: int, subset: ShardedRows | None = None) -> TopK:
        """Each shard's top k, merged: the best k of them all (fewer when fewer rows are allowed)."""
        rows: Sequence[RowSubset | None] = subset.shards if subset is not None else (None,) * len(self.shards)

        def search_shard(number: int) -> TopK:
            return self.shards[number].search(queries, k, rows[number])
        found = list(self._pool.map(search_shard, range(len(self.shards)))) if self._pool is not None \
            else [search_shard(0)]
        return merge_top_k(found, k)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def merge_top_k(found: Sequence[TopK], k: int) -> TopK:
    """The best k per query row of several top-k lists over disjoint items, best first."""
    scores = np.concatenate([result.scores for result in found], axis=1)
    ids = np.concatenate([result.ids for result in found], axis=1)
    k = min(k, scores.shape[1])
    if k == 0:
        return TopK.empty(len(scores))
    # Sort by score, then by id, so that a tie is broken the same way however the rows were split.
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return TopK(np.take_along_axis(scores, order, axis=1).astype(np.float32), np.take_along_axis(ids, order, axis=1))

"""Refilling an on-disk index for a compaction: its stored rows read back a block at a time, merged
with the live ones, and put into the trained index again without training or tuning."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipsearch.index.ondisk import passes
from clipsearch.index.ondisk.passes import (
    Chunks,
    Clock,
    OnDiskFiles,
    fill_and_merge,
    first_pass,
    prepare_work,
)
from clipsearch.index.ondisk.serving import VectorStore, load
from clipsearch.util.files import atomic_path

STORE_ROWS_AT_ONCE = 16_384
"""Rows of the fp16 store a compaction reads at a time: 32 MB as float32 at 512-d, copied a few
times on its way into the lists."""

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
    prepare_work(work, {"refill": True, "count": count, "dim": trained.d, "fill_shard": passes.FILL_SHARD_VECTORS})
    clock = Clock()
    first_pass(chunks, count, trained.d, work, name, sample_size=0, recall_queries=None, progress=progress,
                find_truth=False)
    clock.lap("first_pass")
    trained_path = work / "trained.faiss"
    with atomic_path(trained_path) as temporary:
        faiss.write_index(trained, str(temporary))
    return fill_and_merge(chunks, count, trained_path, work, name, clock, progress)


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

"""Building an on-disk IVF-PQ index: the first pass, training, fill shards merged on disk, then
nprobe and the re-rank depth tuned to the recall target, as they are served."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipsearch.errors import IndexSettingsInvalid
from clipsearch.index.ondisk import passes
from clipsearch.index.ondisk.passes import (
    Chunks,
    Clock,
    OnDiskFiles,
    fill_and_merge,
    first_pass,
    prepare_work,
)
from clipsearch.index.ondisk.serving import VectorStore
from clipsearch.index.spec import DEFAULT_RERANK, RECALL_TARGET, TRAINING_POINTS_PER_LIST, IndexSpec
from clipsearch.index.topk import TopK
from clipsearch.util.files import atomic_path

MAX_RERANK_STEPS = 3
"""Doublings of the re-rank depth the tuning may take (10 → 80 candidates per result)."""
MIN_TRAINING_POINTS = 64 * 256
"""PQ's sub-quantizers have 256 centroids each, and FAISS asks for at least 39 points per centroid."""


log = logging.getLogger(__name__)


def is_on_disk_factory(factory: str) -> bool:
    """Whether `factory` makes an index built and served on disk: an IVF with PQ codes (possibly
    after a transform such as OPQ), e.g. 'IVF65536,PQ64'. Fast-scan PQ ('PQ32x4fs') keeps its
    lists in blocks FAISS cannot put on disk, so it is built in memory as before."""
    parts = [part.strip() for part in factory.split(",")]
    coarse = any(re.fullmatch(r"IVF\d+", part) for part in parts[:-1])
    return coarse and re.fullmatch(r"PQ\d+(x\d+)?", parts[-1]) is not None


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
    prepare_work(work, {"factory": factory, "count": count, "dim": dim, "fill_shard": passes.FILL_SHARD_VECTORS})
    clock = Clock()
    sample_size = min(count, max(ivf.nlist * TRAINING_POINTS_PER_LIST, MIN_TRAINING_POINTS))
    read = first_pass(chunks, count, dim, work, name, sample_size, recall_queries, progress)
    queries, truth = read.queries, read.truth
    if recall_queries is None or len(recall_queries) == 0:
        queries_label = "same modality (no other corpus)"
    clock.lap("first_pass")
    trained_path = work / "trained.faiss"
    if not trained_path.is_file():
        log.info("training %s on %d vectors", factory, len(read.sample))
        index.train(read.sample)
        with atomic_path(trained_path) as temporary:
            faiss.write_index(index, str(temporary))
    clock.lap("train")
    files = fill_and_merge(chunks, count, trained_path, work, name, clock, progress)
    params: dict[str, Any] = {"nlist": int(ivf.nlist), "trained_on": len(read.sample), "trained_with": count,
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

"""FAISS indices over unit vectors: build (exact or IVF), measure recall, save atomically, load.

All indices score by inner product, which on unit vectors is cosine similarity, and map their
rows to the items' int64 ids (IndexIDMap2), so the same ids reach FAISS and the metadata store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipsearch.errors import IndexSettingsInvalid
from clipsearch.index.spec import RECALL_QUERIES, RECALL_TARGET, TRAINING_POINTS_PER_LIST, IndexSpec
from clipsearch.index.topk import TopK
from clipsearch.util.files import atomic_path

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, ids: np.ndarray, factory: str,
                recall_queries: np.ndarray | None = None, queries_label: str | None = None,
                use_gpu: bool = False) -> tuple[faiss.Index, IndexSpec]:
    """Build an inner-product index over `vectors` (float32, (n, d), unit rows) keyed by `ids` (int64, (n,)).

    Approximate indices are trained on a fixed-seed sample, then their nprobe (for IVF) is raised
    until recall@10 against exact search reaches RECALL_TARGET on `recall_queries` (float32,
    (m, d)); both the parameter and the recall reached are returned in the spec.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexSettingsInvalid(f"index factory {factory!r} is not valid for FAISS: {error}") from error
    exact = isinstance(index, faiss.IndexFlat)
    index = faiss.IndexIDMap2(index)
    params: dict[str, Any] = {}
    ivf = _ivf_of(index)
    if ivf is not None and ivf.nlist > max(1, len(vectors)):
        raise IndexSettingsInvalid(f"index factory {factory!r} asks for {ivf.nlist} lists but there are "
                          f"only {len(vectors)} vectors; use fewer lists or the exact 'Flat' index")
    work_index = to_gpu(index) if use_gpu else index
    if not index.is_trained:
        sample = _training_sample(vectors, ivf.nlist if ivf is not None else 256)
        work_index.train(sample)
        params["trained_on"] = len(sample)
        params["trained_with"] = len(vectors)  # how many items there were: compaction retrains past a share of this
    if len(vectors):
        work_index.add_with_ids(vectors, ids)
    if use_gpu:
        index = faiss.index_gpu_to_cpu(work_index)
        ivf = _ivf_of(index)
    if ivf is not None:
        ivf.make_direct_map()  # lets a stored item's vector be read back by id
        params["nlist"] = ivf.nlist
    if exact or len(vectors) == 0:
        return index, IndexSpec(factory, exact=exact, params=params)
    if recall_queries is None or len(recall_queries) == 0:
        recall_queries, queries_label = _sample(vectors, RECALL_QUERIES), "same modality (no other corpus)"
    queries = np.ascontiguousarray(recall_queries[:RECALL_QUERIES], dtype=np.float32)
    recall = _tune(index, ivf, vectors, ids, queries, params)
    log.info("index %s: recall@10 %.3f with %s queries, params %s", factory, recall, queries_label, params)
    return index, IndexSpec(factory, exact=False, params=params, recall_at_10=round(recall, 4),
                            recall_queries=queries_label)


def is_lossless(index: faiss.Index) -> bool:
    """Whether the index stores its vectors exactly (Flat, IVF…,Flat), so they can be read back
    and added to a new index unchanged; compressed codes (PQ, SQ) cannot."""
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVFFlat)


def refill_index(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A copy of `trained` (an IndexIDMap2 built by build_index) holding `vectors` keyed by `ids`
    instead of its own: the same coarse quantizer and parameters, with no training."""
    index = faiss.clone_index(trained)
    index.reset()
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.make_direct_map(False)  # rebuilt below, over the new rows
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    if ivf is not None:
        ivf.make_direct_map()
    return index


def apply_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Restore the search-time parameters recorded at build time (nprobe for IVF)."""
    ivf = _ivf_of(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])


def search(index: faiss.Index, queries: np.ndarray, k: int, selector: Any = None, fraction: float = 1.0) -> TopK:
    """Top-k of each row of `queries` (float32, (n, d)) by inner product, best first.

    With a `selector` (see `selector`), only the items it selects are returned; `fraction` is the
    share of the index they make up. An IVF index then probes 1/fraction times as many lists as
    recorded, so that it visits about as many selected vectors as an unfiltered search visits
    vectors (and recall stays near what was measured at build time). Rows may end in id -1 when
    too few selected items were visited.
    """
    k = min(k, index.ntotal)
    if k == 0:
        return TopK.empty(len(queries))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if selector is None:
        scores, ids = index.search(queries, k)
        return TopK(scores, ids)
    ivf = _ivf_of(index)
    if ivf is not None:
        params: Any = faiss.SearchParametersIVF()
        params.nprobe = min(ivf.nlist, math.ceil(ivf.nprobe / max(fraction, 1e-9)))
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    scores, ids = index.search(queries, k, params=params)
    return TopK(scores, ids)


def selector(ids: np.ndarray) -> Any:
    """A FAISS ID selector for `ids` (int64 (m,)); it copies them into a hash set of its own."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))


def ids_of(index: faiss.Index) -> np.ndarray:
    """The ids an IndexIDMap(2) holds, ascending (int64 (n,))."""
    wrapper: Any = index
    held = faiss.vector_to_array(wrapper.id_map) if hasattr(wrapper, "id_map") else np.arange(index.ntotal)
    return np.sort(held.astype(np.int64))


def reconstruct_many(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The stored vectors (float32 (m, d)) of `ids` (int64 (m,)), which must all be in the index."""
    if len(ids) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return np.asarray(index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64)), dtype=np.float32)


def reconstruct(index: faiss.Index, item_id: int) -> np.ndarray | None:
    """The stored vector (float32, (d,)) of `item_id`, or None if the index has no such id."""
    try:
        return np.asarray(index.reconstruct(int(item_id)), dtype=np.float32)
    except RuntimeError:
        return None


def save_index(index: faiss.Index, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half an index."""
    with atomic_path(path) as temporary:
        faiss.write_index(index, str(temporary))


def load_index(path: Path, mmap: bool = True) -> faiss.Index:
    """Read an index read-only, memory-mapped where the index type allows it (and `mmap`)."""
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        # Not every index type can be memory-mapped; those are read into memory instead.
        return faiss.read_index(str(path))


def _ivf_of(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of `index` on GPU 0 (faiss-gpu only)."""
    return to_gpus(index, [0])


def to_gpus(index: faiss.Index, gpus: Sequence[int]) -> faiss.Index:
    """A copy of `index` split across `gpus` (faiss-gpu only): each holds a shard of the vectors,
    every search runs on all of them and FAISS merges the top k. One GPU: a plain copy there."""
    if len(gpus) == 1:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, gpus[0], index)
        # Kept alive with the index. `referenced_objects` is the one name FAISS's own wrappers use for
        # this, and the only new attribute its Python classes accept (since 1.12 any other raises).
        gpu_index.referenced_objects = [resources]  # type: ignore[attr-defined]
        return gpu_index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_gpus_list(index, co=options, gpus=list(gpus))


def _sample(vectors: np.ndarray, count: int, seed: int = 1234) -> np.ndarray:
    if len(vectors) <= count:
        return vectors
    chosen = np.random.default_rng(seed).choice(len(vectors), size=count, replace=False)
    return vectors[np.sort(chosen)]


def _training_sample(vectors: np.ndarray, lists: int) -> np.ndarray:
    return np.ascontiguousarray(_sample(vectors, lists * TRAINING_POINTS_PER_LIST))


def _tune(index: faiss.Index, ivf: Any, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
          params: dict[str, Any]) -> float:
    """Recall@10 against exact search; for IVF, the smallest power-of-two nprobe reaching the target."""
    k = min(10, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth_rows = exact.search(queries, k)
    truth = ids[truth_rows]

    def recall() -> float:
        _, found = index.search(queries, k)
        hits = sum(len(np.intersect1d(row, truth_row)) for row, truth_row in zip(found, truth, strict=True))
        return hits / truth.size

    if ivf is None:
        return recall()
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        reached = recall()
        if reached >= RECALL_TARGET or nprobe >= ivf.nlist:
            params["nprobe"] = nprobe
            return reached
        nprobe = min(nprobe * 2, ivf.nlist)

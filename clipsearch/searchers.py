"""How an index is searched: one small protocol, and the searchers behind it.

* exact indices: a resident matrix on the model's device (clipsearch.exact), or FAISS on the CPU
  when the matrix does not fit there;
* approximate indices: FAISS, on the GPU when faiss-gpu and a GPU are there, behind a lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import faiss
import numpy as np
import torch

from clipsearch import index as faiss_index
from clipsearch.exact import ExactIndex
from clipsearch.topk import TopK

log = logging.getLogger(__name__)


class Searcher(Protocol):
    """Top-k by inner product of each row of `queries` (float32, (n, d)); safe to call from several threads."""

    def search(self, queries: np.ndarray, k: int) -> TopK: ...


class ExactSearcher:
    """A Flat index held as one matrix on `device` and searched with one GEMM plus top-k."""

    def __init__(self, index: ExactIndex) -> None:
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> TopK:
        return self.index.search(queries, k)


class FaissSearcher:
    """A FAISS index searched by FAISS, one search at a time.

    A FAISS GPU index must not be searched from two threads at once (its resources are not
    thread-safe), and text, image and composed batches search from threads of their own.
    """

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> TopK:
        with self._lock:
            return faiss_index.search(self.index, queries, k)


def searcher_for(index: faiss.Index, exact: bool, device: torch.device, use_gpu: bool) -> Searcher:
    """The fastest searcher that gives `index`'s own answer on `device`."""
    if exact and index.ntotal > 0:
        try:
            return ExactSearcher(ExactIndex.from_faiss(index, device))
        except torch.OutOfMemoryError:
            # Six bytes per dimension per item must fit on the GPU; when they do not, FAISS on the
            # CPU still answers exactly, only slower.
            log.warning("the exact index (%d vectors) does not fit on %s; searching it with FAISS on the CPU",
                        index.ntotal, device)
            return FaissSearcher(index)
    return FaissSearcher(faiss_index.to_gpu(index) if use_gpu else index)

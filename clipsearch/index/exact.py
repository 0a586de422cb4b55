"""Exact top-k search over a resident matrix: one GEMM and one top-k, on the GPU or the CPU.

A FAISS Flat index stays the bundle's format; this is how the server searches it. On a GPU the
matrix is scanned in fp16, which halves the bytes read (the scan is bound by memory bandwidth),
and the fp16 candidates are then rescored in fp32 so that the answer is the exact fp32 answer:

* the scan keeps `k + margin` candidates per query by fp16 score;
* every fp16 score is within ERROR_BOUND of its fp32 value (unit vectors; see below), so an item
  outside the candidates scores at most `last candidate's fp16 score + ERROR_BOUND` in fp32;
* when the k-th best fp32 score among the candidates is above that, no item outside them can be
  in the top k, and the candidates' fp32 order is the answer. Rows where it is not (many items
  within ERROR_BOUND of each other, e.g. near-duplicates) are searched again in fp32.

On the CPU the scan is fp32 already and no rescoring is needed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch

from clipsearch.index.topk import TopK

log = logging.getLogger(__name__)

ERROR_BOUND = 4e-3
"""Largest |fp16 score − fp32 score| allowed for between unit vectors (scaled by the norms otherwise).
Rounding both vectors to fp16 moves their inner product by at most 2·2⁻¹¹ ≈ 1e-3; rounding the
score itself and reduced-precision partial sums in the GEMM add a few more fp16 ulps of a number
≤ 1. 4e-3 leaves room for all of it."""

CANDIDATE_MARGIN = 16
"""Extra candidates kept by the fp16 scan, beyond k (at least k more)."""

SCORE_BUDGET = 1 << 27
"""Most query×item scores held at once (256 MB in fp16); larger searches go block by block."""

DIRECT_FRACTION = 8
"""A filtered search over at most 1/DIRECT_FRACTION of the rows gathers those rows and scans only
them; a wider one scans every row with the others' scores pushed to -inf. Gathering copies each
row once, which costs about as much as reading it twice, so it pays well before 1/8."""


@dataclass(frozen=True, eq=False)
class RowSubset:
    """The rows a filtered search may return: positions in the matrix (int64 (m,), ascending), the
    same on the device, and for a wide subset a per-row bias (0 allowed, -inf not) in scan dtype."""

    rows: np.ndarray
    device_rows: torch.Tensor
    bias: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.rows)


class ExactIndex:
    """All vectors of a Flat index held as one matrix on `device`, searched by inner product.

    `scan_dtype` defaults to fp16 on CUDA and fp32 elsewhere; fp16 on the CPU works too (slowly)
    and exists so the rescoring logic can be tested without a GPU.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: torch.device | str = "cpu",
                 scan_dtype: torch.dtype | None = None) -> None:
        self.device = torch.device(device)
        self.scan_dtype = scan_dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        if self.scan_dtype not in (torch.float16, torch.float32):
            raise ValueError(f"scan_dtype must be float16 or float32 (ERROR_BOUND is for fp16), not {self.scan_dtype}")
        self.ntotal, self.dim = vectors.shape
        # On the CPU this is a view of the caller's array (the FAISS index's own memory): no copy.
        with warnings.catch_warnings():
            # A read-only array (a memory-mapped index) is fine: nothing here ever writes to it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            host = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self._exact = host.to(self.device)
        self._scan = self._exact if self.scan_dtype == torch.float32 else self._exact.to(self.scan_dtype)
        self._ids = np.ascontiguousarray(ids, dtype=np.int64)
        # Bundles hold unit vectors; the bound still holds for any others, scaled by their norms.
        self._largest_norm = float(self._exact.norm(dim=1).max()) if self.ntotal else 0.0
        self._id_order: np.ndarray | None = None
        self.rescans = 0
        """Rows searched again in fp32 because the fp16 candidates could not be proven complete."""

    @property
    def row_ids(self) -> np.ndarray:
        """The id held in each row, in row order (int64 (ntotal,))."""
        return self._ids

    def vectors(self) -> np.ndarray:
        """The exact vectors, in row order, on the host (float32 (ntotal, d); a view on the CPU)."""
        return self._exact.cpu().numpy()

    @property
    def scanned(self) -> torch.Tensor:
        """The matrix every search reads in full, (ntotal, d) in scan_dtype on the device."""
        return self._scan

    @classmethod
    def from_faiss(cls, index: faiss.Index, device: torch.device | str = "cpu",
                   scan_dtype: torch.dtype | None = None) -> ExactIndex:
        """Wrap an IndexIDMap(2) over an IndexFlat (how bundles store exact indices)."""
        wrapper: Any = index  # the SWIG wrapper's attributes are not in FAISS's type hints
        mapped = hasattr(wrapper, "id_map")
        flat = faiss.downcast_index(wrapper.index if mapped else index)
        if not isinstance(flat, faiss.IndexFlat):
            raise TypeError(f"not a Flat index: {type(flat).__name__}")
        count, dim = flat.ntotal, flat.d
        vectors = faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim) if count \
            else np.zeros((0, dim), dtype=np.float32)
        ids = faiss.vector_to_array(wrapper.id_map) if mapped else np.arange(count, dtype=np.int64)
        return cls(vectors, ids, device, scan_dtype)

    def subset(self, ids: np.ndarray) -> RowSubset:
        """The rows holding `ids` (int64 (m,)), ready for filtered searches; ids not held are left out."""
        if self._id_order is None:
            self._id_order = np.argsort(self._ids, kind="stable")
        held = self._ids[self._id_order]
        positions = np.minimum(np.searchsorted(held, ids), max(0, self.ntotal - 1))
        found = held[positions] == ids if self.ntotal else np.zeros(len(ids), dtype=bool)
        rows = np.sort(self._id_order[positions[found]])
        device_rows = torch.from_numpy(rows).to(self.device)
        bias = None
        if len(rows) * DIRECT_FRACTION > self.ntotal:
            bias = torch.full((self.ntotal,), -torch.inf, dtype=self.scan_dtype, device=self.device)
            bias[device_rows] = 0
        return RowSubset(rows, device_rows, bias)

    def ids_of(self, subset: RowSubset) -> np.ndarray:
        """The ids held in `subset`'s rows, ascending (int64 (m,))."""
        return np.sort(self._ids[subset.rows])

    def search(self, queries: np.ndarray, k: int, subset: RowSubset | None = None) -> TopK:
        """Top-k of each row of `queries` (float32, (n, d)) by inner product, best first; with a
        `subset`, among its rows only (fewer than k when it holds fewer)."""
        k = min(k, self.ntotal if subset is None else len(subset))
        count = len(queries)
        if k == 0 or count == 0:
            return TopK.empty(count)
        with torch.inference_mode():
            exact_queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
            if subset is not None and subset.bias is None:
                # Few rows: scan just them, in fp32, so the answer needs no rescoring.
                scores, local = self._top_k(exact_queries, self._exact.index_select(0, subset.device_rows), k)
                rows = subset.device_rows[local]
            elif self._scan is self._exact:
                scores, rows = self._top_k(exact_queries, self._exact, k, None if subset is None else subset.bias)
            else:
                scores, rows = self._scan_and_rescore(exact_queries, k, subset)
            scores_out, rows_out = scores.cpu().numpy(), rows.cpu().numpy()
        return TopK(scores_out.astype(np.float32, copy=False), self._ids[rows_out])

    def _scan_and_rescore(self, queries: torch.Tensor, k: int,
                          subset: RowSubset | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        available = self.ntotal if subset is None else len(subset)
        bias = None if subset is None else subset.bias
        wanted = min(available, k + max(k, CANDIDATE_MARGIN))
        scan_scores, candidates = self._top_k(queries.to(self.scan_dtype), self._scan, wanted, bias)
        # Rescore the candidates exactly: (n, wanted, d) · (n, d) → (n, wanted).
        exact = torch.einsum("nwd,nd->nw", self._exact[candidates], queries)
        exact, order = exact.sort(dim=1, descending=True)
        candidates = candidates.gather(1, order)
        scores, rows = exact[:, :k], candidates[:, :k]
        if wanted == available:
            return scores, rows  # every item was a candidate: nothing can be missing
        bound = ERROR_BOUND * self._largest_norm * queries.norm(dim=1)
        unproven = (scores[:, -1] <= scan_scores[:, -1].float() + bound).nonzero().flatten()
        if len(unproven):
            self.rescans += len(unproven)
            rescanned_scores, rescanned_rows = self._top_k(queries[unproven], self._exact, k, bias)
            scores[unproven], rows[unproven] = rescanned_scores, rescanned_rows
        return scores, rows

    def _top_k(self, queries: torch.Tensor, matrix: torch.Tensor, k: int,
               bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k by one GEMM per block of the matrix, blocks sized to keep SCORE_BUDGET scores at once;
        `bias` (one per matrix row) is added to every score."""
        block = max(k, SCORE_BUDGET // max(1, len(queries)))
        if block >= len(matrix):
            return _block_top_k(queries, matrix, k, bias)
        best_scores, best_rows = [], []
        for start in range(0, len(matrix), block):
            scores, rows = _block_top_k(queries, matrix[start:start + block], min(k, len(matrix) - start),
                                        None if bias is None else bias[start:start + block])
            best_scores.append(scores)
            best_rows.append(rows + start)
        merged_scores, where = torch.topk(torch.cat(best_scores, dim=1), k, dim=1)
        return merged_scores, torch.cat(best_rows, dim=1).gather(1, where)


def _block_top_k(queries: torch.Tensor, matrix: torch.Tensor, k: int,
                 bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of `queries` (n, d) against all of `matrix` (N, d), plus `bias` (N,) if given: fp32
    scores (n, k) and rows (n, k)."""
    if matrix.device.type != "cpu":
        product = queries @ matrix.T
        scores, rows = torch.topk(product if bias is None else product + bias.to(product.dtype), k, dim=1)
        return scores.float(), rows
    # On the CPU the product is computed item-major, (N, d)·(d, n): MKL threads that shape but runs
    # (n, d)·(d, N) on one thread for small n, which made it 2-3× slower for n from 2 to 32. One
    # fp32 query is a matrix-vector product, which torch's MKL also runs on one thread and numpy's
    # BLAS on all cores: about 2× faster at 100k × 512 (docs/benchmarks.md, "exact search").
    if len(queries) == 1 and matrix.dtype == torch.float32:
        item_scores = torch.from_numpy(matrix.numpy() @ queries[0].numpy())[:, None]
    else:
        item_scores = matrix @ queries.T
    if bias is not None:
        item_scores = item_scores + bias.to(item_scores.dtype)[:, None]
    scores, rows = torch.topk(item_scores, k, dim=0)
    return scores.T.float(), rows.T

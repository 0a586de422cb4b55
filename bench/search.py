"""Exact top-k search speed: the resident-matrix GEMM search against FAISS's exact index, same data.

    python -m bench.search --items 1000000 --batches 1 64 1024

Makes random unit vectors, builds the bundle's exact index (IndexIDMap2 over IndexFlatIP), then
for each batch size times clipsearch.exact.ExactIndex and the FAISS baseline measured in the same
run: GpuIndexFlatIP on a GPU (when faiss has GPU support), IndexFlatIP on the CPU otherwise. Also
measures how long merely reading the matrix once takes (a device copy of it): the memory-bandwidth
floor for one query, and the query-major product (n, d)·(d, N) with one top-k per query, the CPU
layout before the item-major one. Prints one JSON line per figure, with whether both returned the
same ids.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial

import faiss
import numpy as np
import torch

from bench.common import emit, latency_summary, ratio, time_calls, unit_vectors
from clipsearch import index as faiss_index
from clipsearch.encoder import resolve_device
from clipsearch.exact import ExactIndex
from clipsearch.topk import TopK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32: 512)")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024], help="queries per search call")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per batch size (at least)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="keep timing each figure for this long")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    vectors = unit_vectors(args.items, args.dim, seed=0)
    ids = np.arange(args.items, dtype=np.int64)
    index, _ = faiss_index.build_index(vectors, ids, faiss_index.EXACT_FACTORY)
    resident = ExactIndex.from_faiss(index, device)
    baseline_name, baseline = _baseline(index, device)
    emit("setup", device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
         items=args.items, dim=args.dim, k=args.k, scan_dtype=str(resident.scan_dtype), baseline=baseline_name)
    floor = _read_floor_s(resident, device)
    emit("memory read floor", ms=floor * 1000, bytes=args.items * args.dim * resident.scanned.element_size(),
         note="one read of the scanned matrix, timed as a device copy of it")
    failures = 0
    for batch in args.batches:
        queries = unit_vectors(batch, args.dim, seed=batch)
        ours = time_calls(partial(resident.search, queries, args.k), args.repeats, min_seconds=args.min_seconds)
        theirs = time_calls(partial(baseline, queries, args.k), args.repeats, min_seconds=args.min_seconds)
        query_major = time_calls(partial(_query_major, resident.scanned, queries, args.k), args.repeats,
                                 min_seconds=args.min_seconds)
        found = resident.search(queries, args.k)
        expected = baseline(queries, args.k)
        expected_scores, expected_ids = expected.scores, expected.ids
        same_rows = float(np.mean([set(a) == set(b) for a, b in zip(found.ids, expected_ids, strict=True)]))
        same_order = float(np.mean((found.ids == expected_ids).all(axis=1)))
        failures += same_rows < 1.0
        mine, base = latency_summary(ours), latency_summary(theirs)
        emit("exact search", batch=batch, k=args.k, items=args.items,
             clipsearch_ms=mine["p50_ms"], clipsearch_queries_per_s=batch / (mine["p50_ms"] / 1000),
             baseline=baseline_name, baseline_ms=base["p50_ms"],
             baseline_queries_per_s=batch / (base["p50_ms"] / 1000),
             speedup=ratio(base["p50_ms"], mine["p50_ms"]),
             query_major_ms=latency_summary(query_major)["p50_ms"],
             vs_query_major=ratio(latency_summary(query_major)["p50_ms"], mine["p50_ms"]),
             vs_memory_floor=ratio(mine["p50_ms"], floor * 1000) if batch == 1 else None,
             same_id_sets=same_rows, same_id_order=same_order,
             max_score_difference=float(np.abs(found.scores - expected_scores).max()),
             fp32_rescans=resident.rescans)
    return 1 if failures else 0


def _baseline(index: faiss.Index, device: torch.device
              ) -> tuple[str, Callable[[np.ndarray, int], TopK]]:
    if device.type == "cuda" and faiss_index.gpu_available():
        gpu_index = faiss_index.to_gpu(index)
        return "faiss GpuIndexFlatIP", lambda queries, k: faiss_index.search(gpu_index, queries, k)
    return "faiss IndexFlatIP (CPU)", lambda queries, k: faiss_index.search(index, queries, k)


def _query_major(matrix: torch.Tensor, queries: np.ndarray, k: int) -> None:
    with torch.inference_mode():
        batch = torch.from_numpy(queries).to(matrix.device, matrix.dtype)
        torch.topk(batch @ matrix.T, k, dim=1)
        if matrix.device.type == "cuda":
            torch.cuda.synchronize(matrix.device)


def _read_floor_s(resident: ExactIndex, device: torch.device) -> float:
    matrix = resident.scanned
    target = torch.empty_like(matrix)

    def copy() -> None:
        target.copy_(matrix)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    # A copy reads and writes every byte; a search only reads them, so half the copy's time.
    return float(np.median(time_calls(copy, 10))) / 2


if __name__ == "__main__":
    sys.exit(main())

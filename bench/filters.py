"""Filtered search speed and recall: filtered against unfiltered, same index, same run.

    python -m bench.filters --items 1000000 --shares 0.5 0.01 0.0001

Makes random unit vectors and an items.sqlite whose items carry a metadata field `bucket` (0 to
9,999, spread evenly and at random over the ids), so that `{"key": "bucket", "range": {"lt": B}}`
matches a known share of them. For each share it times, on the exact index (the server's resident matrix) and on an IVF
index (FAISS, with an ID selector or the stored vectors scored directly):

* compiling the filter and reading the matching ids from SQLite (what the first query with a new
  filter pays; later ones hit the cache);
* preparing them for the searcher (row mask or ID selector);
* one query's search with the filter, against the same search without it (`vs_unfiltered`);
* recall@k against brute force over exactly the matching items (1.0 for the exact index).

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.common import emit, latency_summary, ratio, time_calls, unit_vectors
from clipsearch.index import faiss_index
from clipsearch.index.exact import ExactIndex, RowSubset
from clipsearch.index.searchers import ExactSearcher, FaissSearcher, Searcher
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.modality import Modality
from clipsearch.model.encoder import resolve_device
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import Item, ItemStore, write_items

BUCKETS = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32: 512)")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.01, 0.0001],
                        help="shares of the items the filters match (multiples of 1/10,000)")
    parser.add_argument("--queries", type=int, default=20, help="queries for recall (each timed alone)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure (at least)")
    parser.add_argument("--ivf", default="IVF1024,Flat", help="approximate index to compare ('' to skip)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' for the exact index")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    vectors = unit_vectors(args.items, args.dim, seed=0)
    ids = np.arange(args.items, dtype=np.int64)
    queries = unit_vectors(args.queries, args.dim, seed=1)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        store = _item_store(Path(scratch) / "items.sqlite", args.items)
        emit("setup", items=args.items, dim=args.dim, k=args.k, device=str(device),
             items_sqlite_s=time.perf_counter() - started)
        flat, _ = faiss_index.build_index(vectors, ids, EXACT_FACTORY)
        searchers: dict[str, Searcher] = {"exact": ExactSearcher(ExactIndex.from_faiss(flat, device))}
        if args.ivf:
            started = time.perf_counter()
            ivf, spec = faiss_index.build_index(vectors, ids, args.ivf, recall_queries=queries)
            emit("ivf built", factory=args.ivf, seconds=time.perf_counter() - started, params=spec.params,
                 unfiltered_recall_at_10=spec.recall_at_10)
            searchers["ivf"] = FaissSearcher(ivf)
        failures = 0
        for share in args.shares:
            raw = {"key": "bucket", "range": {"lt": max(1, round(share * BUCKETS))}}
            started = time.perf_counter()
            compiled = parse_filter(raw)
            matching = store.matching_ids(Modality.IMAGE, compiled.sql, compiled.params)
            sql_s = time.perf_counter() - started
            truth = _brute_force(vectors[matching], matching, queries, args.k)
            for name, searcher in searchers.items():
                started = time.perf_counter()
                allowed = searcher.allow(matching)
                prepare_s = time.perf_counter() - started
                plain = latency_summary(time_calls(partial(searcher.search, queries[:1], args.k), args.repeats))
                filtered = latency_summary(time_calls(partial(searcher.search, queries[:1], args.k, allowed),
                                                      args.repeats))
                found = np.concatenate([searcher.search(query[None], args.k, allowed).ids for query in queries])
                recall = float(np.mean([len(np.intersect1d(row, expected)) / max(1, len(expected))
                                        for row, expected in zip(found, truth, strict=True)]))
                failures += name == "exact" and recall < 1.0
                emit("filtered search", index=name, share=share, matching=len(matching), filter_sql_ms=sql_s * 1000,
                     prepare_ms=prepare_s * 1000, unfiltered_ms=plain["p50_ms"], filtered_ms=filtered["p50_ms"],
                     vs_unfiltered=ratio(filtered["p50_ms"], plain["p50_ms"]), recall_at_k=recall,
                     path="selector" if getattr(allowed, "selector", None) is not None else
                     "mask" if isinstance(allowed.rows, RowSubset) and allowed.rows.bias is not None else "direct")
        store.close()
    return 1 if failures else 0


def _item_store(path: Path, count: int) -> ItemStore:
    # Buckets are spread by a fixed permutation, so matching ids are scattered over the index.
    buckets = np.random.default_rng(2).permutation(count) * BUCKETS // count
    write_items(path, (Item(int(item_id), Modality.IMAGE, f"/photos/{item_id}.jpg", None,
                            {"bucket": int(bucket)}, str(item_id)) for item_id, bucket in enumerate(buckets)))
    return ItemStore(path)


def _brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[np.ndarray]:
    scores = queries @ vectors.T
    return [ids[np.argsort(-row, kind="stable")[:k]] for row in scores]


if __name__ == "__main__":
    sys.exit(main())

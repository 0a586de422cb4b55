"""Exact top-k search speed: the resident-matrix GEMM search against FAISS's exact index, same data.

    python -m bench.search --items 1000000 --batches 1 64 1024

Makes random unit vectors, builds the bundle's exact index (IndexIDMap2 over IndexFlatIP), then
for each batch size times clipsearch.index.exact.ExactIndex and the FAISS baseline measured in the same
run: GpuIndexFlatIP on a GPU (when faiss has GPU support), IndexFlatIP on the CPU otherwise. Also
measures how long merely reading the matrix once takes (a device copy of it): the memory-bandwidth
floor for one query, and the query-major product (n, d)·(d, N) with one top-k per query, the CPU
layout before the item-major one. Prints one JSON line per figure, with whether both returned the
same ids.

    python -m bench.search --items 1000000 --batches 1 --hybrid

With --hybrid, also gives every item a synthetic caption (eight words drawn from a 5,000-word
vocabulary by Zipf's law, as words in real captions are), writes them to items.sqlite with its
keyword tables, and times one query's keyword search (FTS5, BM25), hybrid search (the vector and
keyword rankings at depth HYBRID_DEPTH, fused by RRF) and fused search (image and caption vectors
weighed, clipsearch.index.fusion: one scan of the [image | caption] rows, twice as wide) against its
plain vector search, on the same items. Embedding the query text is left out of all: it costs the
same in each.

It also writes a second items.sqlite whose captions are the same draws in Chinese (a 5,000-word
vocabulary of two-character words, written without spaces, as Chinese is), and times Chinese
keyword queries against the English ones, each of three words and of one two-character word: through
the bigrams table, and through the trigram table (and its scan for a one-word query) that bundles
written before the bigrams table still use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.common import emit, latency_summary, ratio, time_calls, unit_vectors
from clipsearch.index import faiss_index
from clipsearch.index.exact import ExactIndex
from clipsearch.index.fusion import Fusion, TextVectors, fused_rows
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import resolve_device
from clipsearch.search.hybrid import HYBRID_DEPTH, RankedList, Ranking, SearchMode, fuse
from clipsearch.store.items import ITEMS_FILE, Item, ItemStore, write_items
from clipsearch.store.keywords import KeywordQuery, compile_query

VOCABULARY = 5000
CAPTION_WORDS = 8
QUERY_WORDS = 3
QUERIES = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32: 512)")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024], help="queries per search call")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per batch size (at least)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="keep timing each figure for this long")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--hybrid", action="store_true",
                        help="also time keyword and hybrid search against vector search over the same items")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    vectors = unit_vectors(args.items, args.dim, seed=0)
    ids = np.arange(args.items, dtype=np.int64)
    index, _ = faiss_index.build_index(vectors, ids, EXACT_FACTORY)
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
    if args.hybrid:
        _hybrid_figures(args, resident)
    return 1 if failures else 0


def _hybrid_figures(args: argparse.Namespace, resident: ExactIndex) -> None:
    random = np.random.default_rng(3)
    vocabulary = np.array([f"w{number}" for number in range(VOCABULARY)])
    zipf = 1.0 / np.arange(1, VOCABULARY + 1)
    zipf /= zipf.sum()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ITEMS_FILE
        started = time.perf_counter()
        words = random.choice(VOCABULARY, size=(args.items, CAPTION_WORDS), p=zipf)
        write_items(path, (Item(item_id, Modality.IMAGE, f"/photos/{item_id}.jpg", " ".join(vocabulary[row]), {},
                                str(item_id)) for item_id, row in enumerate(words)))
        emit("keyword index build", items=args.items, seconds=time.perf_counter() - started,
             items_sqlite_bytes=path.stat().st_size)
        store = ItemStore(path)
        texts = [" ".join(vocabulary[random.choice(VOCABULARY, size=QUERY_WORDS, p=zipf)]) for _ in range(QUERIES)]
        vectors = unit_vectors(QUERIES, args.dim, seed=4)
        turn = iter(range(1 << 62))

        def vector() -> None:
            resident.search(vectors[next(turn) % QUERIES][None], args.k + 1)

        def keyword() -> None:
            store.keyword_search(compile_query(texts[next(turn) % QUERIES]), Modality.IMAGE, limit=args.k + 1)

        captions = unit_vectors(args.items, args.dim, seed=5)
        fused_index = ExactIndex(fused_rows(["caption"], resident.vectors(),
                                            {"caption": TextVectors(captions, np.ones(args.items, bool))}),
                                 resident.row_ids, resident.device)
        del captions
        expanded = Fusion(0.7, 0.3).expand(vectors)

        def fused() -> None:
            fused_index.search(expanded[next(turn) % QUERIES][None], args.k + 1)

        def hybrid() -> None:
            number = next(turn) % QUERIES
            found = resident.search(vectors[number][None], HYBRID_DEPTH)
            ids, scores = store.keyword_search(compile_query(texts[number]), Modality.IMAGE, limit=HYBRID_DEPTH)
            fuse({"vector": RankedList(found.ids[0], found.scores[0]), "keyword": RankedList(ids, scores)},
                 Ranking(SearchMode.HYBRID))
        timings = {name: latency_summary(time_calls(call, args.repeats, min_seconds=args.min_seconds))
                   for name, call in (("vector", vector), ("keyword", keyword), ("hybrid", hybrid),
                                      ("fused", fused))}
        store.close()
    for name in ("keyword", "hybrid", "fused"):
        emit(f"{name} search", items=args.items, k=args.k, query_words=QUERY_WORDS, ms=timings[name]["p50_ms"],
             p90_ms=timings[name]["p90_ms"], vector_ms=timings["vector"]["p50_ms"],
             vs_vector=ratio(timings[name]["p50_ms"], timings["vector"]["p50_ms"]))
    _chinese_figures(args, vocabulary, zipf)


def _chinese_figures(args: argparse.Namespace, english: np.ndarray, zipf: np.ndarray) -> None:
    """Chinese keyword queries against English ones over the same draws of captions and queries."""
    random = np.random.default_rng(7)
    characters = [chr(0x4E00 + number) for number in range(3000)]
    pairs = random.choice(len(characters), size=(4 * VOCABULARY, 2))
    chinese = np.array(list(dict.fromkeys(characters[first] + characters[second]
                                          for first, second in pairs))[:VOCABULARY])
    draws = random.choice(VOCABULARY, size=(args.items, CAPTION_WORDS), p=zipf)
    queries = random.choice(VOCABULARY, size=(QUERIES, QUERY_WORDS), p=zipf)
    words = [random.choice(VOCABULARY, p=zipf) for _ in range(QUERIES)]
    timings: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for language, vocabulary, joiner in (("english", english, " "), ("chinese", chinese, "")):
            path = Path(folder) / f"{language}.sqlite"
            started = time.perf_counter()
            write_items(path, (Item(item_id, Modality.IMAGE, f"/photos/{item_id}.jpg", joiner.join(vocabulary[row]),
                                    {}, str(item_id)) for item_id, row in enumerate(draws)))
            emit(f"keyword index build, {language}", items=args.items, seconds=time.perf_counter() - started,
                 items_sqlite_bytes=path.stat().st_size)
            store = ItemStore(path)
            phrases = [compile_query(joiner.join(vocabulary[row])) for row in queries]
            singles = [compile_query(str(vocabulary[word])) for word in words]
            for shape, compiled in (("three words", phrases), ("one word", singles)):
                timings[f"{language}, {shape}"] = _time_keyword_queries(store, compiled, args)
                if language == "chinese":
                    fallbacks = [query.fallback for query in compiled if query.fallback is not None]
                    timings[f"chinese, trigram path, {shape}"] = _time_keyword_queries(store, fallbacks, args)
            store.close()
    for shape in ("three words", "one word"):
        english_ms = timings[f"english, {shape}"]["p50_ms"]
        for name in (f"chinese, {shape}", f"chinese, trigram path, {shape}"):
            emit(f"keyword search, {name}", items=args.items, ms=timings[name]["p50_ms"],
                 p90_ms=timings[name]["p90_ms"], english_ms=english_ms,
                 english_p90_ms=timings[f"english, {shape}"]["p90_ms"], vs_english=ratio(timings[name]["p50_ms"],
                                                                                          english_ms))


def _time_keyword_queries(store: ItemStore, queries: list[KeywordQuery], args: argparse.Namespace) -> dict[str, float]:
    """p50 and p90 of one keyword search at a time, the queries taken in turn."""
    turn = iter(range(1 << 62))

    def search() -> None:
        store.keyword_search(queries[next(turn) % len(queries)], Modality.IMAGE, limit=args.k + 1)

    return latency_summary(time_calls(search, args.repeats, min_seconds=args.min_seconds))


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

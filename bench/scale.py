"""An index larger than memory: build an on-disk IVF-PQ index (clipsearch.index.ondisk) and serve it.

    python -m bench.scale --count 5000000 --factory IVF2048,PQ64

Vectors are synthetic but shaped like CLIP's (clipsearch.util.synthetic.ClusteredEmbeddings: clusters of
uneven size, and a modality gap between the image vectors indexed and the text vectors that query
them), made in chunks on the fly, so that no pass holds them all. It reports, one JSON line each:

* the build: seconds for the first pass (fp16 store, sample, exact top 10 of the queries),
  training, filling the lists and merging them, over the seconds spent making the vectors;
* bytes on disk: the index, its lists and the fp16 store, per vector;
* recall@10 against exact search of the text queries, with and without the re-rank, at the
  nprobe the build chose;
* serving, in a fresh process that opens the index as the server does: resident memory (anonymous
  and file-backed) over the bytes on disk, and the latency of one query, with the re-rank and
  without, against the same index with its lists read into memory (`vs_in_memory`);
* what 100M and 1B vectors would take, from the per-vector costs measured here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import emit, latency_summary, ratio, time_calls
from clipsearch.index import ondisk
from clipsearch.index.spec import DEFAULT_RERANK, RECALL_TARGET
from clipsearch.util.synthetic import ClusteredEmbeddings

NAME = "image"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5_000_000, help="vectors indexed")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32: 512)")
    parser.add_argument("--factory", default="IVF2048,PQ64", help="an IVF…,PQ… FAISS factory")
    parser.add_argument("--clusters", type=int, default=4096, help="clusters in the synthetic data")
    parser.add_argument("--queries", type=int, default=1000, help="text queries for recall")
    parser.add_argument("--rerank", type=int, default=DEFAULT_RERANK, help="candidates per result re-ranked")
    parser.add_argument("--repeats", type=int, default=200, help="timed single queries per latency figure")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the index (default: a new one in /var/tmp, removed after)")
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)  # the serving process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        return _serve(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="clipsearch-scale-", dir="/var/tmp"))
    try:
        return _build_and_measure(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _build_and_measure(args: argparse.Namespace, work: Path) -> int:
    data = ClusteredEmbeddings(args.dim, clusters=args.clusters, seed=0)
    queries = data.rows("text", 0, args.queries)
    np.save(work / "queries.npy", queries)
    making_s = 0.0

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal making_s
        for start in range(0, args.count, data.CHUNK):
            began = time.perf_counter()
            rows = data.rows("image", start, min(args.count, start + data.CHUNK))
            making_s += time.perf_counter() - began
            yield np.arange(start, start + len(rows), dtype=np.int64), rows

    started = time.perf_counter()
    files, spec = ondisk.build_on_disk(chunks, args.count, args.dim, args.factory, work / "build", NAME,
                                       queries, "text (cross-modal)", args.rerank, progress=True)
    build_s = time.perf_counter() - started
    faiss.write_index(files.index, str(work / "build" / f"{NAME}.faiss"))
    sizes = {"index": (work / "build" / f"{NAME}.faiss").stat().st_size, "lists": files.ivfdata.stat().st_size,
             "fp16 store": files.vectors.stat().st_size + files.ids.stat().st_size}
    on_disk = sum(sizes.values())
    emit("build", count=args.count, dim=args.dim, factory=args.factory, seconds=build_s - making_s,
         making_vectors_s=making_s, **{f"{phase}_s": seconds for phase, seconds in files.seconds.items()},
         vectors_per_s=args.count / max(1e-9, build_s - making_s), nprobe=spec.params["nprobe"])
    emit("bytes on disk", total=on_disk, per_vector=on_disk / args.count,
         **{name.replace(" ", "_"): size for name, size in sizes.items()},
         lists_per_vector=sizes["lists"] / args.count)
    emit("recall@10", queries=args.queries, nprobe=spec.params["nprobe"], with_rerank=spec.recall_at_10,
         without_rerank=spec.params["recall_without_rerank"], rerank=spec.params["rerank"])
    served = json.loads(subprocess.run(
        [sys.executable, "-m", "bench.scale", "--serve", str(work), "--rerank", str(spec.params["rerank"]),
         "--repeats", str(args.repeats)], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    emit("serving", **served, rss_over_bytes_on_disk=served["rss_bytes"] / on_disk,
         vs_in_memory=ratio(served["on_disk_ms"], served["in_memory_ms"]),
         rerank_vs_none=ratio(served["on_disk_ms"], served["on_disk_no_rerank_ms"]))
    _extrapolate(args, sizes, files.seconds, making_s, served)
    return 0 if spec.recall_at_10 is not None and spec.recall_at_10 >= RECALL_TARGET else 1


def _serve(args: argparse.Namespace) -> int:
    """In a fresh process, as a server: open the index and the store, search one query at a time."""
    folder = args.serve / "build"
    index = ondisk.load(folder / f"{NAME}.faiss")
    store = ondisk.VectorStore(folder / f"{NAME}.vectors.npy", folder / f"{NAME}.ids.npy")
    queries = np.load(args.serve / "queries.npy")
    cycle = iter(range(1 << 62))

    def one(rerank: int, searched: Any = index) -> None:
        query = queries[next(cycle) % len(queries)][None]
        ondisk.search(searched, store, query, 10, rerank)

    on_disk = latency_summary(time_calls(partial(one, args.rerank), args.repeats))
    no_rerank = latency_summary(time_calls(partial(one, 1), args.repeats))
    rss = _memory()  # before the in-memory copy below is made
    in_memory = faiss.read_index(str(folder / f"{NAME}.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    ivf = faiss.extract_index_ivf(in_memory)
    arrays: Any = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    arrays.merge_from(ivf.invlists, 0)
    ivf.replace_invlists(arrays, True)
    arrays.this.disown()  # the index owns the lists now
    ivf.nprobe = faiss.extract_index_ivf(index).nprobe
    memory = latency_summary(time_calls(partial(one, args.rerank, in_memory), args.repeats))
    store.close()
    print(json.dumps({"rss_bytes": rss["VmRSS"], "rss_anonymous_bytes": rss["RssAnon"],
                      "rss_file_bytes": rss["RssFile"], "on_disk_ms": on_disk["p50_ms"],
                      "on_disk_p90_ms": on_disk["p90_ms"], "on_disk_no_rerank_ms": no_rerank["p50_ms"],
                      "in_memory_ms": memory["p50_ms"], "in_memory_p90_ms": memory["p90_ms"]}))
    return 0


def _memory() -> dict[str, int]:
    """This process's resident memory (bytes): in all, anonymous (heap), and file-backed (maps)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _extrapolate(args: argparse.Namespace, sizes: dict[str, int], seconds: dict[str, float], making_s: float,
                 served: dict[str, Any]) -> None:
    """What 100M and 1B vectors would take on this machine, from the per-vector costs measured
    here. The lists and the store grow with the count; the resident memory outside the maps is
    the quantizer and tables, which grow with the lists (taken as 4·√n); the two passes over the
    vectors grow with the count (assigning a vector to its list also grows with the lists, which
    this leaves out: a GPU does that part); training grows with the square of the lists."""
    count = args.count
    lists_per_vector = sizes["lists"] / count
    store_per_vector = sizes["fp16 store"] / count
    # Both passes over the vectors made them (making_s); a real build reads them from its shards.
    passes_per_vector = (seconds["first_pass"] + seconds["fill"] + seconds["merge"] - making_s) / count
    measured_lists = int(args.factory.split(",")[0].removeprefix("IVF"))
    for target in (100_000_000, 1_000_000_000):
        lists = 1 << round(np.log2(4 * np.sqrt(target)))
        quantizer = lists * args.dim * 4
        # k-means costs (sample points) × (lists) × dim, and the sample is 64 points per list.
        training_s = seconds["train"] * (lists / measured_lists) ** 2
        emit("extrapolated", count=target, nlist=lists, lists_gb=lists_per_vector * target / 1e9,
             fp16_store_gb=store_per_vector * target / 1e9,
             resident_without_page_cache_gb=(served["rss_anonymous_bytes"] + quantizer) / 1e9,
             passes_hours_2_cores=passes_per_vector * target / 3600, training_hours_2_cores=training_s / 3600)


if __name__ == "__main__":
    sys.exit(main())

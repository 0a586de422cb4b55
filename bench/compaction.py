"""Compaction: how long folding live changes into the base takes, how long writes wait for it, and
what it gives back to searches. Baselines from the same run.

    python -m bench.compaction --items 1000000 --adds 50000 --deletes 50000
    python -m bench.compaction --items 1000000 --adds 50000 --deletes 50000 --factory IVF1024,PQ64

Writes a bundle of --items random unit vectors (no model: compaction never embeds), timing that as
the baseline ("written from vectors": the index built and the bundle written, as a rebuild's last
step is). An IVF…,PQ… factory makes an on-disk index (clipsearch.index.ondisk) of clustered vectors with
a modality gap instead (clipsearch.util.synthetic.ClusteredEmbeddings: IVF needs structure to be measured),
tuned with text queries. Then, through the live log, adds --adds new items and deletes --deletes
base items, and measures:

* one query's search latency (k=10, the server's search path: base index with the deleted rows
  masked, plus the live items scored exactly), with those changes pending;
* the compaction, run in a process of its own: preparing the new base and writing it; its ratio
  to the baseline; that process's peak resident memory above what it held once its modules were
  imported, against the bytes of the bundle's indices (and fp16 store) on disk;
* how long a server worker takes to load the compacted bundle (bundle, log, search service, first
  query): the staleness bound during a swap, beside the poll interval;
* the same searches on the compacted bundle, and their ratio to the latency before;
* a second compaction while a client writes 10 items at a time, --writes-per-s times a second:
  how many writes it carried over, how long writes were held (the bundle's lock, from copying the
  last writes made meanwhile to the swap), and the client's write latency (a write refused by the
  swap runs again on the new bundle, as the server's do) against the same writes before.

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from bench.common import emit, latency_summary, ratio, time_calls, unit_vectors
from clipsearch.config import OFFLINE_MODEL, CompactionPolicy, ModelRef
from clipsearch.errors import BundleReplaced
from clipsearch.index import faiss_index, ondisk
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.search.query import QueryVector
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import ModalityContent, load_bundle, on_disk_name, write_bundle
from clipsearch.store.compaction import CompactionSummary, compact
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from clipsearch.util.synthetic import ClusteredEmbeddings

WRITE_BATCH = 1000
WRITER_BATCH = 10
"""Items per write of the client that keeps writing during the compaction."""
QUIET_WRITES = 50
"""Writes timed before the compaction (their items are folded in with the others)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="vectors in the base")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32: 512)")
    parser.add_argument("--adds", type=int, default=50_000, help="items added through the live log")
    parser.add_argument("--deletes", type=int, default=50_000, help="base items deleted through the live log")
    parser.add_argument("--factory", default=EXACT_FACTORY, help="FAISS index factory of the base")
    parser.add_argument("--clusters", type=int, default=1024, help="clusters of an on-disk base's vectors")
    parser.add_argument("--repeats", type=int, default=30, help="searches timed before and after")
    parser.add_argument("--writes-per-s", type=float, default=100.0,
                        help=f"writes of {WRITER_BATCH} items a second the client makes during the second compaction")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    on_disk = ondisk.is_on_disk_factory(args.factory)
    data = ClusteredEmbeddings(args.dim, args.clusters, seed=0) if on_disk else None
    vectors = unit_vectors(args.items, args.dim, seed=0) if data is None else data.rows("image", 0, args.items)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        path = Path(scratch) / "bundle"
        started = time.perf_counter()
        ids = np.arange(args.items, dtype=np.int64)
        if data is None:
            index, spec = faiss_index.build_index(vectors, ids, args.factory)
            content = ModalityContent(index, spec)
        else:
            def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                return ((ids[start:start + 65_536], vectors[start:start + 65_536])
                        for start in range(0, args.items, 65_536))

            files, spec = ondisk.build_on_disk(chunks, args.items, args.dim, args.factory, Path(scratch) / "work",
                                               on_disk_name(Modality.IMAGE), data.rows("text", 0, 1000),
                                               "text (synthetic)", progress=True)
            content = ModalityContent(files.index, spec, on_disk=files)
        write_bundle(path, ModelRef(OFFLINE_MODEL), args.dim, {Modality.IMAGE: content},
                     (Item(item_id, Modality.IMAGE, f"/photos/{item_id}.jpg", None, {"n": item_id}, str(item_id))
                      for item_id in range(args.items)), {"skipped": []}, {})
        baseline_s = time.perf_counter() - started
        del content
        index_bytes = sum(child.stat().st_size for child in path.iterdir() if child.suffix in (".faiss", ".ivfdata")
                          or child.name.endswith(".npy"))
        emit("written from vectors", items=args.items, dim=args.dim, factory=args.factory, seconds=baseline_s,
             index_bytes=index_bytes, recall_at_10=spec.recall_at_10, params=spec.params)

        bundle = load_bundle(path, verify_checksums=False)
        log = LiveLog(path / LIVE_FILE, bundle.items, args.dim)
        started = time.perf_counter()
        added = unit_vectors(args.adds, args.dim, seed=1) if data is None else \
            data.rows("image", args.items, args.items + args.adds)
        for start in range(0, args.adds, WRITE_BATCH):
            log.write([NewItem(f"added/{number}", Modality.IMAGE, f"/photos/added-{number}.jpg", None, {},
                               str(number), added[number]) for number in range(start, min(start + WRITE_BATCH,
                                                                                         args.adds))])
        doomed = np.random.default_rng(2).choice(args.items, size=min(args.deletes, args.items), replace=False)
        for start in range(0, len(doomed), WRITE_BATCH):
            log.delete(doomed[start:start + WRITE_BATCH].tolist())
        write_s = time.perf_counter() - started
        emit("live changes written", adds=args.adds, deletes=len(doomed),
             items_per_s=(args.adds + len(doomed)) / write_s)

        encoder = load_encoder(OFFLINE_MODEL, None, device="cpu")  # only to satisfy the service: queries are vectors
        queries = unit_vectors(args.repeats, args.dim, seed=3) if data is None else \
            data.rows("text", 1000, 1000 + args.repeats)
        before = _latency(SearchService(encoder, bundle, live=log), queries)
        log.close()
        bundle.close()

        first, imported_bytes, peak_bytes = _compact_in_a_process(path)
        emit("compaction", folded=first.folded, prepare_s=first.prepare_s, write_s=first.commit_s,
             writes_held_s=first.writes_held_s, retrained=first.retrained,
             vs_written_from_vectors=ratio(first.prepare_s + first.commit_s, baseline_s),
             peak_resident_bytes=peak_bytes, resident_after_imports_bytes=imported_bytes,
             peak_above_imports_vs_index_bytes=ratio(peak_bytes - imported_bytes, index_bytes))
        started = time.perf_counter()  # what a server worker does to serve the new bundle
        bundle = load_bundle(path, verify_checksums=False)
        log = LiveLog(path / LIVE_FILE, bundle.items, args.dim)
        service = SearchService(encoder, bundle, live=log)
        service.search_vector(QueryVector(queries[0]), Modality.IMAGE, 10)
        emit("reload", seconds=time.perf_counter() - started)
        after = _latency(service, queries)
        emit("search latency", pending_p50_ms=before["p50_ms"], compacted_p50_ms=after["p50_ms"],
             compacted_vs_pending=ratio(after["p50_ms"], before["p50_ms"]))
        log.close()
        bundle.close()

        # Again, with a client writing all along: what the writes it makes meanwhile cost it.
        quiet = latency_summary(_write_latencies(path, args.dim, threading.Event(), args.writes_per_s,
                                                 QUIET_WRITES, "before"))
        stop = threading.Event()
        during: list[float] = []
        writer = threading.Thread(target=lambda: during.extend(_write_latencies(path, args.dim, stop,
                                                                                args.writes_per_s)))
        writer.start()
        try:
            summary = compact(path, CompactionPolicy())
        finally:
            stop.set()
            writer.join()
        assert summary is not None
        emit("compaction during writes", folded=summary.folded, carried=summary.carried,
             prepare_s=summary.prepare_s, write_s=summary.commit_s, writes_held_s=summary.writes_held_s,
             writes=len(during), writes_per_s=args.writes_per_s, quiet_write_p50_ms=quiet["p50_ms"],
             write_p50_ms=latency_summary(during)["p50_ms"], write_max_ms=max(during, default=0.0) * 1000,
             write_p50_vs_quiet=ratio(latency_summary(during)["p50_ms"], quiet["p50_ms"]))
    return 0


COMPACT = """
import dataclasses, json, sys
from pathlib import Path
from clipsearch.config import CompactionPolicy
from clipsearch.store.compaction import compact

def memory(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

imported = memory("VmRSS")
summary = dataclasses.asdict(compact(Path(sys.argv[1]), CompactionPolicy()))
Path(sys.argv[2]).write_text(json.dumps({"summary": summary, "imported": imported, "peak": memory("VmHWM")}))
"""


def _compact_in_a_process(path: Path) -> tuple[CompactionSummary, int, int]:
    """Compact in a child process, so that its peak resident memory is the compaction's alone (this
    one holds the vectors it made); returns the summary, the child's resident bytes once its
    modules were imported, and its peak."""
    out = path.with_name("compaction.json")
    subprocess.run([sys.executable, "-c", COMPACT, str(path), str(out)], check=True)
    done = json.loads(out.read_text())
    return CompactionSummary(**done["summary"]), done["imported"], done["peak"]


def _write_latencies(path: Path, dim: int, stop: threading.Event, per_second: float, count: int | None = None,
                     name: str = "meanwhile") -> list[float]:
    """Seconds per write of WRITER_BATCH new items, `per_second` writes a second, until `stop` (or
    `count` writes); a write the compaction's swap refused (nothing written) runs again on the new
    bundle, as a server's does, and its time counts whole."""
    vectors = unit_vectors(WRITER_BATCH, dim, seed=4)
    times: list[float] = []
    bundle = load_bundle(path, verify_checksums=False)
    log = LiveLog(path / LIVE_FILE, bundle.items, dim)
    while not stop.is_set() and (count is None or len(times) < count):
        number = len(times)
        batch = [NewItem(f"{name}/{number}/{row}", Modality.IMAGE, f"/photos/{name}-{number}-{row}.jpg",
                         None, {}, f"{number}-{row}", vectors[row]) for row in range(WRITER_BATCH)]
        started = time.perf_counter()
        while True:
            try:
                log.write(batch)
                break
            except BundleReplaced:
                log.close()
                bundle.close()
                bundle = load_bundle(path, verify_checksums=False)
                log = LiveLog(path / LIVE_FILE, bundle.items, dim)
        times.append(time.perf_counter() - started)
        time.sleep(max(0.0, 1 / per_second - times[-1]))
    log.close()
    bundle.close()
    return times


def _latency(service: SearchService, queries: np.ndarray) -> dict[str, float]:
    service.search_vector(QueryVector(queries[0]), Modality.IMAGE, 10)  # the deleted rows' mask, made once
    times: list[float] = []
    for query in queries:
        times += time_calls(partial(service.search_vector, QueryVector(query), Modality.IMAGE, 10), 1, warmup=0)
    service.close()
    return latency_summary(times)


if __name__ == "__main__":
    sys.exit(main())

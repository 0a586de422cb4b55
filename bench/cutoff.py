"""What a relevance cut-off and an order by metadata cost, against the plain top-k search of the same
query on the same bundle, in the same run; and what a snapshot of that bundle holds writes up for.

    python -m bench.cutoff --items 100000 --passing 10 100 1000 9000

Writes a bundle of random unit vectors (exact index) whose items carry a `taken_at` date, and a
live log with --adds items. For each count of passing items it sets `min_score` between the
scores of that many items and the next (from the query's own scores), then times one query's
search (k=10) with `min_score`, and with `min_score` plus `order_by: taken_at`, against the same
search without either (`vs_top_k`). A cut-off gathers every item that passes: the first search
takes the best 1,024, and only when all of them pass does a second one take as many as may be
gathered (10,001); ordering looks up every passing item, so its cost grows with how many pass.
Queries are vectors: embedding the text costs the same either way, and is left out.

Then it snapshots the bundle (clipsearch.store.bundle.snapshot) and reports how long writes were
held up (the consistent copy under the bundle's lock) against the whole snapshot, and restores it.
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
from clipsearch.config import OFFLINE_MODEL, ModelRef, QueryLimits
from clipsearch.index import faiss_index
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.search.cutoff import OrderBy
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import ModalityContent, load_bundle, write_bundle
from clipsearch.store.bundle.snapshot import restore_snapshot, take_snapshot
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem

K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="vectors in the bundle")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32: 512)")
    parser.add_argument("--passing", type=int, nargs="+", default=[10, 100, 1000, 9000],
                        help="how many items pass each cut-off (at most the server's 10,000 by default)")
    parser.add_argument("--adds", type=int, default=1000, help="live items written before the snapshot")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure (at least)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    vectors = unit_vectors(args.items, args.dim, seed=0)
    ids = np.arange(args.items, dtype=np.int64)
    days = np.random.default_rng(1).integers(0, 3650, size=args.items)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        path = Path(scratch) / "bundle"
        index, spec = faiss_index.build_index(vectors, ids, EXACT_FACTORY)
        write_bundle(path, ModelRef(OFFLINE_MODEL), args.dim, {Modality.IMAGE: ModalityContent(index, spec)},
                     (Item(item_id, Modality.IMAGE, f"/photos/{item_id}.jpg", None,
                           {"taken_at": str(np.datetime64("2015-01-01") + int(days[item_id]))}, str(item_id))
                      for item_id in range(args.items)), {"skipped": []}, {})
        bundle = load_bundle(path, verify_checksums=False)
        log = LiveLog(path / LIVE_FILE, bundle.items, args.dim)
        added = unit_vectors(args.adds, args.dim, seed=2)
        for start in range(0, args.adds, 256):
            log.write([NewItem(f"added/{number}", Modality.IMAGE, f"/photos/added-{number}.jpg", None, {}, str(number),
                               added[number]) for number in range(start, min(start + 256, args.adds))])
        encoder = load_encoder(OFFLINE_MODEL, None, device="cpu")  # only to satisfy the service: queries are vectors
        service = SearchService(encoder, bundle, QueryLimits(max_k=K), live=log)
        query = QueryVector(unit_vectors(1, args.dim, seed=3)[0])
        emit("setup", items=args.items, live_items=args.adds, dim=args.dim, k=K)
        scores = np.sort(np.concatenate([vectors @ query.vector, added @ query.vector]))[::-1]
        plain = latency_summary(time_calls(lambda: service.search_vector(query, Modality.IMAGE, K), args.repeats))
        emit("top-k", **plain)
        failures = 0
        for passing in args.passing:
            floor = float((scores[passing - 1] + scores[passing]) / 2)
            answer = service.search_vector(query, Modality.IMAGE, K, ResultOptions(min_score=floor))
            failures += answer.matched != passing
            cut = latency_summary(time_calls(partial(service.search_vector, query, Modality.IMAGE, K,
                                                     ResultOptions(min_score=floor)), args.repeats))
            by_date = ResultOptions(min_score=floor, order_by=OrderBy("taken_at"))
            ordered = latency_summary(time_calls(partial(service.search_vector, query, Modality.IMAGE, K, by_date),
                                                 args.repeats))
            emit("cut-off", passing=passing, min_score=floor, matched=answer.matched, p50_ms=cut["p50_ms"],
                 vs_top_k=ratio(cut["p50_ms"], plain["p50_ms"]), ordered_p50_ms=ordered["p50_ms"],
                 ordered_vs_top_k=ratio(ordered["p50_ms"], plain["p50_ms"]))
        service.close()
        log.close()
        bundle.close()
        info = take_snapshot(path, Path(scratch) / "snapshot.tar")
        started = time.perf_counter()
        restore_snapshot(info.path, Path(scratch) / "restored")
        emit("snapshot", files=info.files, bytes=info.bytes, writes_held_ms=info.locked_s * 1000, seconds=info.took_s,
             held_vs_whole=ratio(info.locked_s, info.took_s), restore_s=time.perf_counter() - started)
    if failures:
        print(f"{failures} cut-offs counted other than the items that pass them", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

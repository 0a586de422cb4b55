"""Live writes: add throughput over HTTP, and search latency while writes pour in.

    python -m bench.updates --model ViT-B-32 --device cpu --base 10000 --adds 2000 --writers 4

Builds a bundle of --base generated texts (random model weights: speed only, no download), then
serves it with writes on and measures in the same run:

* the build's own throughput on those texts (items/s): the baseline for adding;
* adding --adds new texts over HTTP (POST /items, --batch per request, --writers concurrent
  clients), each write durable before it is answered: items/s, and its ratio to the build's;
* one client's text-search latency on a quiet server, then while --writers clients keep adding
  (the "write storm"): p50 and p99, and their ratios;
* deleting the added items by id, --batch per request: items/s.

Filtered search is measured by bench.filters. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import WORDS, emit, latency_summary, ratio, served
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig

ADMIN_KEY = "bench-updates"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="open_clip model (random weights)")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    parser.add_argument("--base", type=int, default=10_000, help="texts in the built bundle")
    parser.add_argument("--adds", type=int, default=2_000, help="texts added over HTTP")
    parser.add_argument("--batch", type=int, default=64, help="items per write request")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writing clients")
    parser.add_argument("--searches", type=int, default=200, help="searches timed, quiet and during writes")
    return parser.parse_args(argv)


def sentences(count: int, seed: int) -> list[str]:
    generator = random.Random(seed)
    return [f"{' '.join(generator.choices(WORDS, k=6))} number {seed}-{number}" for number in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        texts = Path(scratch) / "texts.txt"
        texts.write_text("\n".join(sentences(args.base, seed=0)) + "\n")
        started = time.perf_counter()
        build(BuildConfig(out=Path(scratch) / "bundle", texts=texts, model=args.model, pretrained=None,
                          device=args.device, backend="torch", progress=False))
        build_per_s = args.base / (time.perf_counter() - started)
        emit("build", texts=args.base, items_per_s=build_per_s, model=args.model, device=args.device)
        environment = {"CLIPSEARCH_ADMIN_KEY": ADMIN_KEY, "CLIPSEARCH_DEVICE": args.device,
                       "CLIPSEARCH_BACKEND": "torch", "CLIPSEARCH_MAX_WRITE_ITEMS": str(max(256, args.batch))}
        with served(Path(scratch) / "bundle", environment) as (url, _):
            added, add_s = _add(url, sentences(args.adds, seed=1), args.batch, args.writers)
            emit("adds over HTTP", items=len(added), batch=args.batch, writers=args.writers,
                 items_per_s=len(added) / add_s, vs_build=ratio(len(added) / add_s, build_per_s))
            quiet = latency_summary(_searches(url, args.searches))
            storm_stop = threading.Event()
            storm = threading.Thread(target=_storm, args=(url, args.batch, args.writers, storm_stop), daemon=True)
            storm.start()
            try:
                busy = latency_summary(_searches(url, args.searches))
            finally:
                storm_stop.set()
                storm.join()
            emit("search latency during writes", quiet_p50_ms=quiet["p50_ms"], quiet_p99_ms=quiet["p99_ms"],
                 writing_p50_ms=busy["p50_ms"], writing_p99_ms=busy["p99_ms"],
                 p50_ratio=ratio(busy["p50_ms"], quiet["p50_ms"]), p99_ratio=ratio(busy["p99_ms"], quiet["p99_ms"]),
                 writers=args.writers)
            started = time.perf_counter()
            with httpx.Client(base_url=url, timeout=60, headers={"X-Admin-Key": ADMIN_KEY}) as client:
                for start in range(0, len(added), args.batch):
                    response = client.post("/items/delete", json={"ids": added[start:start + args.batch]})
                    response.raise_for_status()
            emit("deletes over HTTP", items=len(added), batch=args.batch,
                 items_per_s=len(added) / (time.perf_counter() - started))
    return 0


def _add(url: str, texts: list[str], batch: int, writers: int) -> tuple[list[int], float]:
    batches = [texts[start:start + batch] for start in range(0, len(texts), batch)]

    def write(chunk: list[str]) -> list[int]:
        with httpx.Client(base_url=url, timeout=120, headers={"X-Admin-Key": ADMIN_KEY}) as client:
            response = client.post("/items", json={"items": [{"text": text} for text in chunk]})
            response.raise_for_status()
            return list(response.json()["ids"])

    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        ids = [item_id for written in pool.map(write, batches) for item_id in written]
    return ids, time.perf_counter() - started


def _storm(url: str, batch: int, writers: int, stop: threading.Event) -> None:
    def keep_writing(writer: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"X-Admin-Key": ADMIN_KEY}) as client:
            round_number = 0
            while not stop.is_set():
                chunk = sentences(batch, seed=1000 * (writer + 2) + round_number)
                client.post("/items", json={"items": [{"text": text} for text in chunk]}).raise_for_status()
                round_number += 1

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(keep_writing, range(writers)))


def _searches(url: str, count: int) -> list[float]:
    queries = sentences(count, seed=7)
    seconds = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for query in queries:
            started = time.perf_counter()
            client.post("/search/text", json={"text": query, "target": "text", "k": 10}).raise_for_status()
            seconds.append(time.perf_counter() - started)
    return seconds


if __name__ == "__main__":
    sys.exit(main())

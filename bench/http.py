"""Query latency and throughput over HTTP, against an empty endpoint and a direct in-process call.

    python -m bench.http --items 1000000 --model ViT-B-32 --clients 64 --client-processes 8 --compare-unbatched

Writes a bundle of random unit vectors (the index is synthetic; the model has random weights: speed
only, no download), then measures in the same run:
  * the direct in-process call (SearchService: embed + search, no HTTP), one query at a time;
  * `python -m app` over that bundle: /health (an empty endpoint), a text query and a 640×480 JPEG
    upload from one client, then text queries from --clients concurrent clients;
  * with --compare-unbatched, the same against a server with CLIPSEARCH_MAX_BATCH=1, which shows
    what micro-batching adds to throughput and costs (should be nothing) in one client's latency;
  * with --variant NAME:SETTING=VALUE,..., one server per variant (settings as in README, lower
    case, without CLIPSEARCH_), each compared with the first variant. For example, the server
    before the CPU work of docs/benchmarks.md against today's default and two workers:

        python -m bench.http --model ViT-B-32 --device cpu --clients 16 --client-processes 1 \
            --variant before:backend=torch,text_trim=false,max_batch=1 --variant default: \
            --variant two-workers:server_workers=2
Clients are plain keep-alive HTTP/1.1 connections (http.client) spread over several processes, so
the load generator is not the bottleneck; its own CPU use is reported. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import open_clip
import torch

from bench.common import (
    WORDS,
    cpu_seconds,
    emit,
    latency_summary,
    ratio,
    resident_mb,
    served,
    synthetic_photo,
    time_calls,
    unit_vectors,
)
from clipsearch.config import ModelRef
from clipsearch.index import faiss_index
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import ModalityContent, load_bundle, write_bundle
from clipsearch.store.items import Item

BOUNDARY = "clipsearch-bench-boundary"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="image vectors in the synthetic bundle")
    parser.add_argument("--texts", type=int, default=10_000, help="text vectors in the synthetic bundle")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--requests", type=int, default=500, help="requests per one-client figure")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients for the throughput figure")
    parser.add_argument("--client-processes", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                        help="processes the concurrent clients are spread over")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of concurrent load")
    parser.add_argument("--server-workers", type=int, default=1, help="CLIPSEARCH_SERVER_WORKERS")
    parser.add_argument("--compare-unbatched", action="store_true", help="also measure a server with max batch 1")
    parser.add_argument("--variant", type=_variant, action="append", default=[],
                        help="NAME:SETTING=VALUE,...: a server with these settings; the first is the baseline")
    args = parser.parse_args(argv)
    if not args.variant:
        args.variant = [("", {})]
    if args.compare_unbatched:
        args.variant.append(("unbatched ", {"CLIPSEARCH_MAX_BATCH": "1"}))
    return args


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    settings = {}
    for assignment in filter(None, assignments.split(",")):
        key, equals, value = assignment.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"{assignment!r} is not SETTING=VALUE")
        settings[f"CLIPSEARCH_{key.strip().upper()}"] = value.strip()
    return (f"{name} " if name else ""), settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jpeg = synthetic_photo(seed=7)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        bundle = write_synthetic_bundle(Path(scratch) / "bundle", args.model, args.items, args.texts)
        emit("synthetic bundle", items=args.items, texts=args.texts, seconds=time.perf_counter() - started)
        direct = measure_direct(bundle, args, jpeg)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the in-process model is gone; leave the GPU to the server
        errors, outcomes, memory = 0, {}, {}
        for label, settings in args.variant:
            environment = {"CLIPSEARCH_VERIFY_CHECKSUMS": "false", "CLIPSEARCH_DEVICE": args.device,
                           "CLIPSEARCH_SERVER_WORKERS": str(args.server_workers), **settings}
            with served(bundle, environment) as (url, server):
                workers = int(environment["CLIPSEARCH_SERVER_WORKERS"])
                _wait_for_every_worker(url, workers)
                info = httpx.get(f"{url}/info", timeout=10).json()
                emit(f"{label}server", settings=settings, workers=workers, backend=info["backend"],
                     threads=info["threads"], text_trim=info["text_trim"], torch_weights=info["torch_weights"],
                     **resident_mb(server.pid))
                outcomes[label] = one_client, load = measure_server(url, args, jpeg, direct, label, workers,
                                                                    server.pid)
                memory[label] = resident_mb(server.pid)
                emit(f"{label}server memory", after="the load", **memory[label])
                errors += len(one_client.errors) + len(load.errors)
        (baseline, (base_one, base_load)), *others = outcomes.items()
        for label, (one_client, load) in others:
            if args.compare_unbatched and label == "unbatched ":
                emit("micro-batching effect", clients=args.clients,
                     throughput_ratio=ratio(base_load.rate, load.rate),
                     one_client_p50_ratio=ratio(base_one.p50, one_client.p50),
                     note="batched server against CLIPSEARCH_MAX_BATCH=1, same bundle, same run")
            else:
                emit(f"{label}against {baseline or 'default '}".rstrip(), clients=args.clients,
                     one_client_text_p50_ratio=ratio(one_client.p50, base_one.p50),
                     throughput_ratio=ratio(load.rate, base_load.rate),
                     rss_ratio=ratio(memory[label]["rss_mb"], memory[baseline]["rss_mb"]),
                     note="p50 and RSS ratios below 1 and throughput ratio above 1 are better; same bundle, "
                          "same run")
    return 1 if errors else 0


def write_synthetic_bundle(out: Path, model: str, images: int, texts: int) -> Path:
    config = open_clip.get_model_config(model)
    if config is None:
        raise SystemExit(f"unknown model {model!r}")
    dim = int(config["embed_dim"])
    content, items = {}, []
    for modality, count, first_id in ((Modality.IMAGE, images, 0), (Modality.TEXT, texts, images)):
        ids = np.arange(first_id, first_id + count, dtype=np.int64)
        index, spec = faiss_index.build_index(unit_vectors(count, dim, seed=first_id), ids, EXACT_FACTORY)
        content[modality] = ModalityContent(index=index, spec=spec)
        items.append((modality, first_id, count))
    records = (Item(id=item_id, modality=modality, uri=f"synthetic/{modality.value}/{item_id}",
                    text=f"synthetic {modality.value} {item_id}", extra={}, content_hash=str(item_id))
               for modality, first_id, count in items for item_id in range(first_id, first_id + count))
    write_bundle(out, ModelRef(model), dim, content, records, {"skipped": []}, {"bench": "http"})
    return out


def measure_direct(bundle_path: Path, args: argparse.Namespace, jpeg: bytes) -> dict[str, float]:
    """One query at a time through SearchService in this process: what HTTP adds is measured against it."""
    # The backend the default server picks ('auto', or CLIPSEARCH_BACKEND), so that vs_direct compares like with like.
    encoder = load_encoder(args.model, None, None, args.device, backend=os.environ.get("CLIPSEARCH_BACKEND", "auto"))
    if encoder.device.type == "cuda":
        encoder.enable_cuda_graphs(64)
    bundle = load_bundle(bundle_path, verify_checksums=False)
    service = SearchService(encoder, bundle, use_gpu=encoder.device.type == "cuda" and faiss_index.gpu_available())
    service.warm_up()
    texts = _texts(args.requests, seed=0)

    def text_query(number: int) -> None:
        service.search(service.embed_text(texts[number % len(texts)]).vector, Modality.IMAGE, 10)
    counter = iter(range(10**9))
    text = latency_summary(time_calls(lambda: text_query(next(counter)), args.requests, warmup=10))
    image = latency_summary(time_calls(lambda: service.search(service.embed_image(jpeg).vector, Modality.IMAGE, 10),
                                       max(20, args.requests // 5), warmup=5))
    emit("direct call (in process)", device=str(encoder.device), backend=encoder.backend,
         gpu=torch.cuda.get_device_name(encoder.device) if encoder.device.type == "cuda" else None,
         model=args.model, items=args.items, cuda_graphs=encoder.cuda_graphs,
         text_p50_ms=text["p50_ms"], text_p99_ms=text["p99_ms"], image_p50_ms=image["p50_ms"],
         image_p99_ms=image["p99_ms"])
    service.close()
    bundle.close()
    return {"text_p50_ms": text["p50_ms"], "image_p50_ms": image["p50_ms"]}


def measure_server(url: str, args: argparse.Namespace, jpeg: bytes, direct: dict[str, float],
                   label: str, workers: int, server_pid: int) -> tuple[Tally, Tally]:
    """The one-client figures and the concurrent one; returns the one-client text and the concurrent tallies.

    Each figure also gives the server's CPU time per request (its processes, all threads): what bounds
    one server's throughput when its Python work, not the model, is what requests wait for."""
    def clients(kind: str, **options: Any) -> tuple[Tally, float | None]:
        before = cpu_seconds(server_pid)
        tally = run_clients(url, kind, jpeg, **options)
        after = cpu_seconds(server_pid)
        spent = None if before is None or after is None or not tally.latencies_s else \
            round(1000 * (after - before) / len(tally.latencies_s), 3)
        return tally, spent

    health, health_cpu = clients("health", clients=1, processes=0, requests=args.requests)
    emit(f"{label}health, one client", **health.figures(), server_cpu_ms_per_request=health_cpu)
    text, text_cpu = clients("text", clients=1, processes=0, requests=args.requests)
    emit(f"{label}text query, one client", **text.figures(), vs_direct=ratio(text.p50, direct["text_p50_ms"]),
         vs_health=ratio(text.p50, health.p50), server_cpu_ms_per_request=text_cpu)
    image, image_cpu = clients("image", clients=1, processes=0, requests=max(20, args.requests // 5))
    emit(f"{label}image upload, one client", **image.figures(), vs_direct=ratio(image.p50, direct["image_p50_ms"]),
         upload_kb=round(len(jpeg) / 1024, 1), server_cpu_ms_per_request=image_cpu)
    run_clients(url, "text", jpeg, clients=args.clients, processes=args.client_processes, duration=1.0)  # warm-up
    load, load_cpu = clients("text", clients=args.clients, processes=args.client_processes, duration=args.duration)
    emit(f"{label}text queries, {args.clients} clients", **load.figures(), client_processes=args.client_processes,
         server_workers=workers, vs_one_client_rate=ratio(load.rate, text.rate), server_cpu_ms_per_request=load_cpu,
         vs_health_cpu=None if load_cpu is None or health_cpu is None else ratio(load_cpu, health_cpu))
    for error in (health.errors + text.errors + image.errors + load.errors)[:5]:
        emit("error", detail=error)
    text.errors += health.errors + image.errors
    return text, load


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def p50(self) -> float:
        return latency_summary(self.latencies_s)["p50_ms"]

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, float | int]:
        return {"requests": len(self.latencies_s), "requests_per_s": self.rate, **latency_summary(self.latencies_s),
                "errors": len(self.errors), "client_cpu_cores": self.client_cpu_s / self.seconds if self.seconds else 0}


def run_clients(url: str, kind: str, jpeg: bytes, clients: int, processes: int, requests: int | None = None,
                duration: float | None = None) -> Tally:
    """`clients` keep-alive connections, in this process (processes=0) or spread over `processes`."""
    if processes == 0:
        return _client_process(url, kind, jpeg, clients, requests, duration, seed=0)
    shares = [clients // processes + (number < clients % processes) for number in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(_client_process, [(url, kind, jpeg, share, requests, duration, seed)
                                               for seed, share in enumerate(shares) if share])
    total = Tally()
    for part in parts:
        total.latencies_s += part.latencies_s
        total.errors += part.errors
        total.seconds = max(total.seconds, part.seconds)
        total.client_cpu_s += part.client_cpu_s
    return total


def _client_process(url: str, kind: str, jpeg: bytes, clients: int, requests: int | None,
                    duration: float | None, seed: int) -> Tally:
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    tally = _client_threads(url, kind, jpeg, clients, requests, duration, seed)
    after = resource.getrusage(resource.RUSAGE_SELF)
    tally.client_cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return tally


def _client_threads(url: str, kind: str, jpeg: bytes, clients: int, requests: int | None, duration: float | None,
                    seed: int) -> Tally:
    import threading

    tally = Tally()
    lock = threading.Lock()
    deadline = time.monotonic() + duration if duration is not None else None
    split = urlsplit(url)

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=60)
        texts = _texts(64, seed=seed * 1000 + number)
        latencies, errors = [], []
        sent = 0
        while (requests is None or sent < requests) and (deadline is None or time.monotonic() < deadline):
            method, path, body, headers = _request(kind, texts[sent % len(texts)], jpeg)
            begin = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    errors.append(f"{response.status} {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as error:
                errors.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=60)
            latencies.append(time.perf_counter() - begin)
            sent += 1
        connection.close()
        with lock:
            tally.latencies_s += latencies
            tally.errors += errors

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.seconds = time.perf_counter() - started
    return tally


def _request(kind: str, text: str, jpeg: bytes) -> tuple[str, str, bytes | None, dict[str, str]]:
    if kind == "health":
        return "GET", "/health", None, {}
    if kind == "text":
        return "POST", "/search/text", json.dumps({"text": text, "k": 10}).encode(), \
            {"Content-Type": "application/json"}
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="query.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
    return "POST", "/search/image", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) for _ in range(count)]


def _wait_for_every_worker(url: str, workers: int) -> None:
    """/ready answered by one worker says nothing of the others: ask on fresh connections until all agree."""
    split = urlsplit(url)
    in_a_row, deadline = 0, time.monotonic() + 600
    while in_a_row < 4 * workers and time.monotonic() < deadline:
        connection = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=10)
        connection.request("GET", "/ready")
        in_a_row = in_a_row + 1 if connection.getresponse().status == 200 else 0
        connection.close()
        if not in_a_row:
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())

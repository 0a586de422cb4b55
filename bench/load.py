"""Bounded load test on loopback: many concurrent clients mixing text and image queries.

    python -m bench.load --clients 32 --duration 60

Starts `python -m app` on a free loopback port over a bundle (a generated one with the tiny model
unless --bundle is given), measures an empty endpoint (/health) at the same concurrency as the
same-run baseline, then runs the mix. Prints one JSON line per figure; exits 1 on any error or when
the server's resident memory grew more than --max-rss-growth after warm-up. Stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.common import ROOT, WORDS, latency_summary, served


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: generate one with the tiny model)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--image-share", type=float, default=0.3, help="fraction of queries that upload an image")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed server memory growth")
    return parser.parse_args(argv)


def make_bundle(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    for number in range(200):
        pixels = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{number:04d}.jpg", quality=85)
    (folder / "texts.txt").write_text("".join(f"{' '.join(rng.choice(WORDS, 6))}\n" for _ in range(500)))
    subprocess.run([sys.executable, "-m", "indexer", "build", "--images", str(folder / "images"), "--texts",
                    str(folder / "texts.txt"), "--out", str(folder / "bundle"), "--model", "tiny", "--device", "cpu",
                    "--no-progress"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return folder / "bundle"


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def client_loop(client: httpx.AsyncClient, deadline: float, tally: Tally, share: float, seed: int,
                      images: list[bytes], health_only: bool) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            if health_only:
                response = await client.get("/health")
            elif rng.random() < share:
                response = await client.post("/search/image", files={"file": ("q.jpg", rng.choice(images))},
                                             data={"k": "10"})
            else:
                text = " ".join(rng.choices(WORDS, k=4))
                response = await client.post("/search/text", json={"text": text, "k": 10})
            if response.status_code != 200:
                tally.errors.append(f"{response.status_code} {response.text[:200]}")
        except httpx.HTTPError as error:
            tally.errors.append(f"{type(error).__name__}: {error}")
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)


async def run_phase(url: str, clients: int, seconds: float, share: float, images: list[bytes],
                    health_only: bool = False) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(client, deadline, tally, share, seed, images, health_only)
                               for seed in range(clients)))
    return tally


def percentiles(tally: Tally, seconds: float) -> dict[str, float]:
    summary = latency_summary([latency / 1000 for latency in tally.latencies_ms])
    return {"requests": len(tally.latencies_ms), "requests_per_s": round(len(tally.latencies_ms) / seconds, 1),
            **{name: round(summary[name], 2) for name in ("p50_ms", "p90_ms", "p99_ms")},
            "max_ms": round(max(tally.latencies_ms, default=float("nan")), 2), "errors": len(tally.errors)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or make_bundle(Path(scratch))
        with served(bundle, ready_within_s=120) as (url, server):
            return measure(args, url, server)


def measure(args: argparse.Namespace, url: str, server: subprocess.Popen[bytes]) -> int:
    rng = np.random.default_rng(1)
    images = []
    for _ in range(8):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    baseline_seconds = min(5.0, args.duration)
    baseline = asyncio.run(run_phase(url, args.clients, baseline_seconds, 0, images, health_only=True))
    asyncio.run(run_phase(url, args.clients, args.warmup, args.image_share, images))
    rss_warm = resident_mb(server.pid)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    tally = asyncio.run(run_phase(url, args.clients, args.duration, args.image_share, images))
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    rss_end = resident_mb(server.pid)
    client_cpu = (cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime) / elapsed
    base, load = percentiles(baseline, baseline_seconds), percentiles(tally, elapsed)
    growth = (rss_end - rss_warm) / rss_warm
    print(json.dumps({"figure": "baseline /health", "clients": args.clients, **base}))
    print(json.dumps({"figure": "mixed search load", "clients": args.clients, "seconds": round(elapsed, 1),
                      "image_share": args.image_share, **load,
                      "p50_vs_health": round(load["p50_ms"] / base["p50_ms"], 2) if base["p50_ms"] else None,
                      "client_cpu_cores": round(client_cpu, 2)}))
    print(json.dumps({"figure": "server memory", "rss_after_warmup_mb": round(rss_warm, 1),
                      "rss_end_mb": round(rss_end, 1), "growth": round(growth, 4),
                      "limit": args.max_rss_growth}))
    for error in tally.errors[:5] + baseline.errors[:5]:
        print(json.dumps({"figure": "error", "detail": error}))
    return 0 if not tally.errors and not baseline.errors and growth <= args.max_rss_growth else 1


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark scripts share: synthetic data, timing, a served bundle, one JSON line per figure."""

from __future__ import annotations

import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["dog", "cat", "beach", "night", "city", "red", "blue", "car", "tree", "house", "mountain", "river",
         "people", "food", "street", "sky", "snow", "boat", "bridge", "garden"]
"""Query texts are made of these."""


def emit(figure: str, **fields: Any) -> None:
    """Print one figure as a JSON line (rounded, so lines stay readable)."""
    rounded = {name: round(value, 4) if isinstance(value, float) else value for name, value in fields.items()}
    print(json.dumps({"figure": figure, **rounded}), flush=True)


def unit_vectors(count: int, dim: int, seed: int = 0, chunk: int = 1 << 18) -> np.ndarray:
    """Random unit rows, float32 (count, dim); generated in chunks so a million rows stay cheap."""
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        part = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        vectors[start:start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return vectors


def synthetic_sound(seed: int, seconds: float, rate: int = 44_100) -> np.ndarray:
    """Mono float32 samples of `seconds`: a new sound every 2 to 8 s (a tone, a chirp or noise), as a
    podcast's or a home video's sound changes."""
    rng = np.random.default_rng(seed)
    pieces, made = [], 0.0
    while made < seconds:
        length = min(float(rng.uniform(2, 8)), seconds - made)
        times = np.arange(int(length * rate)) / rate
        kind = int(rng.integers(3))
        if kind == 0:
            piece = np.sin(2 * np.pi * rng.uniform(100, 4000) * times)
        elif kind == 1:
            start, stop = rng.uniform(100, 4000, 2)
            piece = np.sin(2 * np.pi * (start * times + (stop - start) * times ** 2 / (2 * length)))
        else:
            piece = rng.uniform(-1, 1, len(times))
        pieces.append(0.3 * piece)
        made += length
    return np.concatenate(pieces).astype(np.float32)


def encode_sound(output: Any, stream: Any, samples: np.ndarray, rate: int, channels: int, step: int) -> None:
    """Encode mono `samples` (the same on every channel) into `stream` of the PyAV `output`, `step` at a time."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    planar = np.ascontiguousarray(np.stack([samples] * channels))
    for start in range(0, planar.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + step]), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            output.mux(packet)
    for packet in stream.encode(None):
        output.mux(packet)


def synthetic_photo(seed: int, width: int = 640, height: int = 480, quality: int = 85) -> bytes:
    """A JPEG that compresses like a photo (about 55 KB at 640×480): smooth colour blobs plus grain."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                  Image.Resampling.BICUBIC)
    pixels = np.asarray(blobs, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def time_calls(call: Callable[[], object], repeats: int, warmup: int = 3, min_seconds: float = 0.0) -> list[float]:
    """Seconds per call, `repeats` times (more while under `min_seconds` in all), after `warmup` calls."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return times


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and mean in milliseconds."""
    millis = np.array(seconds) * 1000 if seconds else np.array([float("nan")])
    return {"p50_ms": float(np.percentile(millis, 50)), "p90_ms": float(np.percentile(millis, 90)),
            "p99_ms": float(np.percentile(millis, 99)), "mean_ms": float(statistics.fmean(millis))}


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """Process `pid` and every process under it (a server's workers), read from /proc (Linux)."""
    pids, found = [pid], []
    while pids:
        current = pids.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            pids.extend(int(child) for child in task.read_text().split())
    return found


def cpu_seconds(pid: int) -> float | None:
    """The CPU time that process `pid` and every process under it have used so far, to the nanosecond:
    the sum of their threads' time on a CPU (/proc/PID/task/TID/schedstat; /proc/PID/stat counts in
    10 ms ticks, too coarse for a request). Threads that have exited are not counted, so measure
    across a stretch in which the server's threads live on. None where /proc cannot tell (not Linux)."""
    if not Path(f"/proc/{pid}/task").is_dir():
        return None
    total = 0
    for process in process_tree(pid):
        for thread in Path(f"/proc/{process}/task").glob("*/schedstat"):
            try:
                total += int(thread.read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):  # gone meanwhile
                continue
    return total / 1e9


def resident_mb(pid: int) -> dict[str, float]:
    """The resident memory of process `pid` and every process under it (a server's workers), now and at
    its peak (VmRSS, VmHWM), in MB."""
    totals = {"VmRSS": 0.0, "VmHWM": 0.0}
    for process in process_tree(pid):
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in totals:
                    totals[name] += int(value.split()[0]) / 1024  # kB
        except FileNotFoundError:  # exited meanwhile
            continue
    return {"rss_mb": round(totals["VmRSS"], 1), "peak_rss_mb": round(totals["VmHWM"], 1)}


def wait_until_answering(url: str, process: subprocess.Popen[bytes], log_path: Path, within_s: float) -> None:
    """Poll `url` until it answers 200; SystemExit with the end of `log_path` if `process` exits first
    or `within_s` passes."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer; the server's log ends:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def served(bundle: Path, environment: Mapping[str, str] | None = None,
           ready_within_s: float = 600) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m app` over `bundle` on a free loopback port, until the block ends; yields (url, process).

    The server's log goes to a file (CLIPSEARCH_BENCH_SERVER_LOG, or a temporary one) rather than a
    pipe nobody reads, which would stall the server once full; its tail is shown if it fails to start.
    """
    port = free_port()
    settings = {"CLIPSEARCH_BUNDLE_PATH": str(bundle), "CLIPSEARCH_PORT": str(port),
                "CLIPSEARCH_DEVICE": os.environ.get("CLIPSEARCH_DEVICE", "auto"), **(environment or {})}
    log_path = Path(os.environ.get("CLIPSEARCH_BENCH_SERVER_LOG") or tempfile.mkstemp(suffix=".log")[1])
    with log_path.open("ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env={**os.environ, **settings},
                                  stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/ready", server, log_path, ready_within_s)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

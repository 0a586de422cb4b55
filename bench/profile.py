"""Where one query's time goes in the server: a py-spy profile of `python -m app` under one client.

    python -m bench.profile --model ViT-B-32 --items 100000 --seconds 20 --kind text

Writes a synthetic bundle (as bench.http does), starts the server, and samples it with py-spy
(every thread) while one client sends queries one after another. Each
sample is put in the first stage, in the order of STAGES, that one of its frames names; the
figures are each stage's share of the busy samples (py-spy leaves out threads that wait), and the
stacks seen most often. Sampling does not pause the server (--nonblocking), so the client's
latency is the server's own; native frames are not read (that would pause it). Needs py-spy
(in the [dev] extra) and the right to trace the server (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit, served, synthetic_photo
from bench.http import Tally, run_clients, write_synthetic_bundle

STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("tokenizer", ("tokenizer.py",)),  # before the text tower: encode_texts calls it
    ("image decode and resize", ("PIL", "ImagePreparer", "UploadDecoder", "images.py")),
    ("image tower", ("encode_images",)),
    ("text tower", ("encode_texts",)),
    ("exact search", ("ExactIndex", "faiss")),
    ("batcher hand-off", ("MicroBatcher", "batching.py", "concurrent/futures")),
    ("HTTP, routing and JSON", ("uvicorn", "h11", "starlette", "fastapi", "pydantic", "json", "anyio")),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="image vectors in the synthetic bundle")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to sample")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--kind", choices=["text", "image"], default="text", help="what the client sends")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting (as README, lower case, without CLIPSEARCH_)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (it is in the [dev] extra)")
    settings = {"CLIPSEARCH_VERIFY_CHECKSUMS": "false", "CLIPSEARCH_DEVICE": "cpu"}
    for assignment in args.setting:
        name, _, value = assignment.partition("=")
        settings[f"CLIPSEARCH_{name.upper()}"] = value
    jpeg = synthetic_photo(seed=7)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = write_synthetic_bundle(Path(scratch) / "bundle", args.model, args.items, 100)
        with served(bundle, settings) as (url, server):
            run_clients(url, args.kind, jpeg, clients=1, processes=0, requests=20)  # warm-up
            raw = Path(scratch) / "profile.txt"
            record = subprocess.Popen([py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate),
                                       "--duration", str(int(args.seconds)), "--format", "raw", "--threads",
                                       "--nonblocking", "--output", str(raw)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
            tally = run_clients_until(url, args.kind, jpeg, record)
            stacks = parse_collapsed(raw.read_text())
    busy = sum(stacks.values())
    emit("setup", model=args.model, items=args.items, kind=args.kind, settings=settings, samples=busy,
         requests=len(tally.latencies_s), p50_ms=tally.p50)
    by_stage: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        by_stage[stage_of(stack)] += count
    for stage, count in by_stage.most_common():
        emit("stage", stage=stage, share=count / busy if busy else 0.0, samples=count)
    for stack, count in stacks.most_common(8):
        emit("hot stack", share=count / busy if busy else 0.0, frames=" ← ".join(stack.split(";")[::-1][:6]))
    return 0


def run_clients_until(url: str, kind: str, jpeg: bytes, record: subprocess.Popen[bytes]) -> Tally:
    """One client, query after query, until py-spy has finished sampling."""
    total = Tally()
    while record.poll() is None:
        part = run_clients(url, kind, jpeg, clients=1, processes=0, requests=10)
        total.latencies_s += part.latencies_s
        total.seconds += part.seconds
    if record.returncode != 0:
        raise SystemExit(f"py-spy failed: {record.stderr.read().decode() if record.stderr else ''}")
    return total


def parse_collapsed(text: str) -> collections.Counter[str]:
    """py-spy's raw format: 'frame;frame;... count' per line, outermost frame first."""
    stacks: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def stage_of(stack: str) -> str:
    for stage, markers in STAGES:
        if any(marker in stack for marker in markers):
            return stage
    return "other"


if __name__ == "__main__":
    sys.exit(main())

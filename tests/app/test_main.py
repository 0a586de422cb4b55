"""`python -m app` as a user starts it: from the environment, with several worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.serving import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_workers(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    environment = {**os.environ, "CLIPSEARCH_BUNDLE_PATH": str(bundle_path), "CLIPSEARCH_PORT": str(port),
                   "CLIPSEARCH_DEVICE": "cpu", "CLIPSEARCH_SERVER_WORKERS": "2", "CLIPSEARCH_HEADER_TIMEOUT_S": "0.5"}
    log = tmp_path_factory.mktemp("two-workers") / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=environment, stdout=output,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # Fresh connections land on whichever worker accepts first, so a run of 200s can all come from
        # one of them: wait for each worker's own "ready:" log line, then for /ready itself.
        ready_in_a_row, deadline = 0, time.monotonic() + 120
        while log.read_text().count("ready: ") < 2 or ready_in_a_row < 8:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                ready = httpx.get(f"{url}/ready", timeout=5, headers={"Connection": "close"}).status_code == 200
            except httpx.TransportError:
                ready = False
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
            time.sleep(0 if ready else 0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_two_workers_serve_searches_with_the_cores_shared_between_them(two_workers: str) -> None:
    cores = len(os.sched_getaffinity(0))
    for _ in range(6):
        with httpx.Client(base_url=two_workers, timeout=30) as http:
            info = http.get("/info")
            assert info.status_code == 200, info.text
            assert info.json()["threads"] == max(1, cores // 2)
            hits = http.post("/search/text", json={"text": "a red square", "k": 3}).json()["results"]
            assert len(hits) == 3


def test_every_worker_holds_slow_clients_to_the_header_time_limit(two_workers: str) -> None:
    port = int(two_workers.rsplit(":", 1)[1])
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.settimeout(10)
            started = time.monotonic()
            assert connection.recv(4096).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 5

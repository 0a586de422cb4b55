"""`python -m app` as a user starts it: from the environment, with several worker processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.serving import free_port, on_every_worker

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
        while log.read_text().count("clipsearch is ready: open") < 2 or ready_in_a_row < 8:
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

    def searches_with_its_share_of_the_cores(http: httpx.Client) -> None:
        assert http.get("/info").json()["threads"] == max(1, cores // 2)
        hits = http.post("/search/text", json={"text": "a red square", "k": 3}).json()["results"]
        assert len(hits) == 3

    assert len(on_every_worker(two_workers, 2, searches_with_its_share_of_the_cores, times=6)) == 2


def test_every_worker_holds_slow_clients_to_the_header_time_limit(two_workers: str) -> None:
    port = int(two_workers.rsplit(":", 1)[1])
    held: set[int] = set()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.settimeout(30)  # far past the 0.5 s limit: only a server that never cuts off fails
            # One whole request first, to learn which worker holds this connection...
            connection.sendall(b"GET /info HTTP/1.1\r\nHost: test\r\n\r\n")
            worker = json.loads(_response(connection).split(b"\r\n\r\n", 1)[1])["worker"]
            # ...then a request whose headers never end.
            connection.sendall(b"GET /info HTTP/1.1\r\nHost: test\r\n")
            started = time.monotonic()
            answer = connection.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert time.monotonic() - started >= 0.5  # not before the limit
            held.add(worker)
        if len(held) == 2:
            return
    raise AssertionError(f"only {len(held)} of 2 workers answered in 200 connections")


def _response(connection: socket.socket) -> bytes:
    """One whole response with a content-length body, read from `connection`."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, body = received.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body

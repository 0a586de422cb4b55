"""Servers for the tests: the real app under uvicorn in this process, or `python -m app` in a child
process, on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from app.__main__ import server_options
from app.main import create_app
from app.settings import Settings

ADMIN = "let-me-write"
"""The admin key of the servers the tests write through."""
LIMITS = dict(max_k=50, max_upload_mb=1.0, max_pixels=1_000_000, max_query_terms=4, max_text_chars=2_000)


@contextmanager
def serve(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """Run the real app (or `app`, made from `settings`) under uvicorn on a free loopback port; yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app or create_app(settings), log_level="warning", lifespan="on",
                                           **server_options(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code != 503 or "loading" not in \
                    httpx.get(f"{url}/ready", timeout=5).text:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess(subprocess.Popen[bytes]):
    """`python -m app` in a session of its own: kill() ends its workers with it (killing the
    supervisor alone left each worker serving on, an orphan holding its model)."""

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


def start_server_process(live_bundle: Path, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m app` over `live_bundle` with writes on, once ready: the process and its URL."""
    port = free_port()
    environment = {**os.environ, "CLIPSEARCH_BUNDLE_PATH": str(live_bundle), "CLIPSEARCH_DEVICE": "cpu",
                   "CLIPSEARCH_ADMIN_KEY": ADMIN, "CLIPSEARCH_PORT": str(port), **extra}
    process = ServerProcess([sys.executable, "-m", "app"], env=environment, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    ready_in_a_row = 0  # with several workers, one may answer ready while another still loads
    while time.monotonic() < deadline and process.poll() is None:
        try:
            ready_in_a_row = ready_in_a_row + 1 if httpx.get(f"{url}/ready", timeout=2).status_code == 200 else 0
        except httpx.TransportError:
            ready_in_a_row = 0
        if ready_in_a_row >= 20:
            return process, url
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the server did not become ready")


def on_every_worker(url: str, workers: int, check: Callable[[httpx.Client], None], times: int = 10,
                    attempts: int = 200) -> set[int]:
    """Run `check` on fresh connections, at least `times` times and until every one of `workers`
    worker processes has answered one (each connection's worker read from /info; one still loading
    is passed over); fails if one never does within `attempts` connections. The kernel hands each
    connection to one worker, in no set order. Returns the workers' process ids."""
    answered: set[int] = set()
    checked = 0
    for _ in range(attempts):
        with httpx.Client(base_url=url, timeout=30) as fresh:  # one connection: one worker answers all of it
            info = fresh.get("/info")
            if info.status_code == 503 and "loading" in info.text:  # a worker still starting: not it yet
                time.sleep(0.1)
                continue
            assert info.status_code == 200, info.text
            answered.add(info.json()["worker"])
            check(fresh)
            checked += 1
        if len(answered) == workers and checked >= times:
            return answered
    raise AssertionError(f"only {len(answered)} of {workers} workers answered in {attempts} connections")

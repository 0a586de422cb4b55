"""The real app under uvicorn on a free loopback port, as `python -m app` serves it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from app.__main__ import server_options
from app.main import create_app
from app.settings import Settings

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

"""Uvicorn's HTTP/1.1 protocol with read time limits, so slow clients cannot hold connections forever.

Uvicorn bounds idle keep-alive connections, but not a client that sends its request headers one
byte at a time, or stops halfway through a body. This protocol adds what nginx calls
client_header_timeout and client_body_timeout:

* the request line and headers must arrive within `header_timeout_s` of their first byte;
* while a body is being received, no more than `body_timeout_s` may pass between two reads.

Either one answers 408 (the documented JSON error) and closes the connection. Together with
uvicorn's `limit_concurrency` (CLIPSEARCH_MAX_CONNECTIONS), they bound how many connections a
slow or hostile client can hold, and for how long.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(header_timeout_s: float, body_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`http=`) in this process, with these time limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})


ENVIRONMENT_PROTOCOL = "app.protocol:EnvironmentGuardedH11Protocol"
"""What to give uvicorn when it starts worker processes: they import the protocol by name (a class
made by guarded_protocol cannot be pickled to them), and read its limits from the environment."""


def send_without_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection, as asyncio does only for sockets it made.

    asyncio sets TCP_NODELAY only where the socket object says IPPROTO_TCP. A listening socket made
    with socket.socket() says 0, and so do the connections accepted from it: uvicorn's own, with
    several workers, and any passed in with `sockets=`. Without TCP_NODELAY a response written in
    two parts (headers, then body) waits for the client's delayed ACK: 40 ms on Linux, which made
    every request to two workers take 44 ms at least (docs/benchmarks.md).
    """
    connection = transport.get_extra_info("socket")
    if connection is not None and connection.family in (socket.AF_INET, socket.AF_INET6):
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._timing_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        send_without_delay(transport)
        # A connection that never sends a byte is held to the same limit as one that sends slowly.
        self._start_timer(self.header_timeout_s, "the request headers")
        self._timing_headers = True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.trailing_data[0]:
            # Part of a request line or header block: the clock runs from its first byte, and
            # further bytes do not reset it (that is what a slow-loris client counts on).
            if not self._timing_headers:
                self._start_timer(self.header_timeout_s, "the request headers")
                self._timing_headers = True
        elif state is h11.SEND_BODY:
            self._start_timer(self.body_timeout_s, "the request body")  # reset by every read
            self._timing_headers = False
        else:
            self._stop_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _start_timer(self, seconds: float, waiting_for: str) -> None:
        self._stop_timer()
        self._read_timer = self.loop.call_later(seconds, self._timed_out, seconds, waiting_for)

    def _stop_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._timing_headers = False

    def _timed_out(self, seconds: float, waiting_for: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app is behind, not the client: wait for it
            self._start_timer(seconds, waiting_for)
            return
        # Answered unless a response is under way: before the first request, and on a kept-alive
        # connection whose next request stalled after the last response was complete.
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            reason = f"{waiting_for} did not arrive within {seconds:g} s"
            body = json.dumps({"detail": reason, "field": None, "reason": reason}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
        self.transport.close()


class EnvironmentGuardedH11Protocol(GuardedH11Protocol):
    """GuardedH11Protocol with the time limits of the CLIPSEARCH_* environment, as the worker's app reads them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.header_timeout_s, self.body_timeout_s = _environment_limits()
        super().__init__(*args, **kwargs)


@functools.cache
def _environment_limits() -> tuple[float, float]:
    from app.settings import Settings

    settings = Settings()
    return settings.header_timeout_s, settings.body_timeout_s

"""ASGI middleware: the body size limit, HEAD wherever GET is answered, and JSON for every 4xx."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body, plain_error_reason


class BodySizeLimit:
    """413 for a body over `max_bytes`, whether its Content-Length says so or it is streamed (chunked).

    A declared length is trusted (the HTTP server enforces framing); a body without one is read
    into memory here, up to the limit, and then handed on to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_body(413, f"request body is over the limit of {self.max_bytes} bytes")(scope, receive, send)


class HeadAsGet:
    """Answer HEAD as GET without the body: load balancers and uptime checks probe with HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app(dict(scope, method="GET"), receive, send_headers_only)


class JSONErrors:
    """Give a 4xx that Starlette answered in plain text itself (a bad Range header: 400 or 416) the
    documented JSON error shape, keeping its status and headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body = b""

        async def send_json_errors(message: Message) -> None:
            nonlocal held, body
            if message["type"] == "http.response.start":
                headers = Headers(raw=message["headers"])
                if 400 <= message["status"] < 500 and "json" not in headers.get("content-type", ""):
                    held = message  # rewritten once the whole plain body is here
                    return
            elif held is not None and message["type"] == "http.response.body":
                body += message.get("body", b"")
                if message.get("more_body", False):
                    return
                await self._send_json(scope, held, body, send)
                return
            await send(message)

        await self.app(scope, receive, send_json_errors)

    @staticmethod
    async def _send_json(scope: Scope, start: Message, body: bytes, send: Send) -> None:
        status = start["status"]
        field = "Range" if status in (400, 416) and Headers(scope=scope).get("range") is not None else None
        response = error_body(status, plain_error_reason(status, body), field)
        headers = MutableHeaders(raw=list(start["headers"]))
        for name in ("content-type", "content-length"):
            del headers[name]
        headers.update({"content-type": "application/json", "content-length": str(len(response.body))})
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})

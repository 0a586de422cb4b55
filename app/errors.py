"""The one place where errors become HTTP responses: {"detail": "<field>: <reason>", "field", "reason"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsearch.errors import InvalidQuery, ItemNotFound, QueryImageTooLarge, ServiceBusy

log = logging.getLogger(__name__)


class ServiceNotReady(Exception):
    """The model or the bundle is not loaded (yet, or at all); `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAuthenticated(Exception):
    """The API key is required and was missing or wrong."""


class PayloadTooLarge(Exception):
    """The request body is over the configured limit (answered by app.limits.BodySizeLimit)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"request body is over the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


def error_body(status: int, reason: str, field: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    detail = f"{field}: {reason}" if field else reason
    return JSONResponse({"detail": detail, "field": field, "reason": reason}, status_code=status, headers=headers)


def _field_of(location: tuple[int | str, ...]) -> str:
    parts = list(location[1:] if location and location[0] in ("body", "query", "path", "form") else location)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidQuery)
    async def invalid_query(request: Request, error: InvalidQuery) -> JSONResponse:
        return error_body(413 if isinstance(error, QueryImageTooLarge) else 422, error.reason, error.field)

    @app.exception_handler(ItemNotFound)
    async def item_not_found(request: Request, error: ItemNotFound) -> JSONResponse:
        return error_body(404, str(error), "id")

    @app.exception_handler(ServiceBusy)
    async def busy(request: Request, error: ServiceBusy) -> JSONResponse:
        return error_body(503, str(error), headers={"Retry-After": "1"})

    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(request: Request, error: NotAuthenticated) -> JSONResponse:
        return error_body(401, "missing or wrong API key", "X-API-Key", headers={"WWW-Authenticate": "X-API-Key"})

    @app.exception_handler(ServiceNotReady)
    async def not_ready(request: Request, error: ServiceNotReady) -> JSONResponse:
        return error_body(503, error.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field = _field_of(tuple(first.get("loc", ())))
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return error_body(422, reason, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_body(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_body(500, "internal error; the server log has the details")

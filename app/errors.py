"""The one place where errors become HTTP responses: {"detail": "<field>: <reason>", "field", "reason"}.

Every error the core raises on purpose is a ClipSearchError; one handler answers them all, with
the status STATUS gives for the nearest class in the error's hierarchy (clipsearch/errors.py
draws it). Errors of the web layer itself (validation, routing, Starlette's own plain-text
answers) are given the same JSON shape here too.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from clipsearch.errors import (
    AudioDecodeError,
    AudioTooLarge,
    BundleError,
    ClipSearchError,
    CollectionConflict,
    CollectionNotFound,
    CollectionOverBudget,
    ImageDecodeError,
    ImageTooLarge,
    InvalidQuery,
    ItemNotFound,
    ModelLoadError,
    NoSoundTrack,
    OutsideKeyFilter,
    QueryImageTooLarge,
    ServiceBusy,
    StorageError,
    StorageFull,
    StorageLocked,
    VideoDecodeError,
    VideoTooLarge,
)

log = logging.getLogger(__name__)


class ServiceNotReady(ClipSearchError):
    """The model or the bundle is not loaded (yet, or at all); the reason says which."""


class WritesUnavailable(ClipSearchError):
    """The bundle cannot take writes (its directory is read-only); the reason says why."""


STATUS: dict[type[ClipSearchError], int] = {
    ClipSearchError: 500,
    BundleError: 503,
    ModelLoadError: 503,
    ServiceNotReady: 503,
    ServiceBusy: 503,
    ImageDecodeError: 422,
    ImageTooLarge: 413,
    VideoDecodeError: 422,
    VideoTooLarge: 413,
    AudioDecodeError: 422,
    AudioTooLarge: 413,
    NoSoundTrack: 422,
    InvalidQuery: 422,
    QueryImageTooLarge: 413,
    ItemNotFound: 404,
    CollectionNotFound: 404,
    CollectionConflict: 409,
    CollectionOverBudget: 503,
    OutsideKeyFilter: 403,
    WritesUnavailable: 503,
    StorageError: 503,  # read-only, not permitted, or locked elsewhere: searches go on, writes come back
    StorageFull: 507,  # Insufficient Storage
}
HEADERS: dict[type[ClipSearchError], dict[str, str]] = {
    ServiceBusy: {"Retry-After": "1"},
    StorageLocked: {"Retry-After": "1"},
}


API_FIELD_NAMES = [(re.compile(r"^data$"), "file"), (re.compile(r"^terms(?=\[|$)"), "queries"),
                   (re.compile(r"\.data$"), ".image_b64")]
"""How the API spells the core's fields: an upload is `file`, composed terms are `queries`, and an
image term's bytes arrive base64-encoded in `image_b64`."""


def api_field(field: str) -> str:
    """The API's name for a field the core named after its own parameters."""
    for pattern, replacement in API_FIELD_NAMES:
        field = pattern.sub(replacement, field)
    return field


def status_of(error_class: type[ClipSearchError]) -> int:
    """The status of the nearest class in `error_class`'s hierarchy that STATUS names."""
    return next(STATUS[cls] for cls in error_class.__mro__ if cls in STATUS)


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
    @app.exception_handler(ClipSearchError)
    async def domain_error(request: Request, error: ClipSearchError) -> JSONResponse:
        status = status_of(type(error))
        if isinstance(error, StorageError):  # the machine's fault, not a bug: /info and the metrics count them
            log.warning("%s on %s %s: %s", type(error).__name__, request.method, request.url.path, error)
        elif status >= 500 and not isinstance(error, ServiceBusy | ServiceNotReady):
            log.error("%s on %s %s: %s", type(error).__name__, request.method, request.url.path, error)
        headers = next((HEADERS[cls] for cls in type(error).__mro__ if cls in HEADERS), None)
        return error_body(status, error.reason, api_field(error.field) if error.field else None, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field = _field_of(tuple(first.get("loc", ())))
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return error_body(422, reason, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_body(error.status_code, str(error.detail), headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_body(500, "internal error; the server log has the details")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path, asked of the routes themselves. Starlette's own
    405 names only the first route that matches, but one path may have several (GET, PATCH and
    DELETE /items/{id})."""
    return [method for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if any(route.matches(dict(request.scope, method=method))[0] == Match.FULL
                   for route in request.app.router.routes)]


def plain_error_reason(status: int, body: bytes) -> str:
    """The reason of a plain-text error answer Starlette wrote itself (a bad Range header, say)."""
    text = body.decode("utf-8", "replace").strip().removeprefix("Range header: ")
    return text or HTTPStatus(status).phrase

"""The error responses the routers document in the OpenAPI schema, shared through their package."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in (
        (400, "The body could not be parsed at all (broken JSON, broken multipart)."),
        (404, "An item the query names does not exist."),
        (413, "The request or its image is too large."),
        (422, "A field is invalid; `field` names it and `reason` says why."),
        (503, "The model or the bundle is not loaded."))}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {
    "model": ErrorResponse, "description": "The server requires an API key (X-API-Key) and it was missing or wrong."}}

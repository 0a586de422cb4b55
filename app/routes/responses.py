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
UNKNOWN_COLLECTION: dict[int | str, dict[str, Any]] = {404: {
    "model": ErrorResponse, "description": "No collection this server serves has that name (`field`: collection), "
                                           "or an item the request names does not exist."}}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {
    "model": ErrorResponse, "description": "The server requires an API key (X-API-Key) and it was missing or wrong."}}

WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {
    "model": ErrorResponse, "description": "Writes are off (neither CLIPSEARCH_ADMIN_KEY nor CLIPSEARCH_KEYS_FILE "
                                           "set), the X-Admin-Key header was missing or wrong, the X-API-Key's key may "
                                           "not do this (its scope, its collections), or the write would put an "
                                           "item outside the key's filter."}, 503: {
    "model": ErrorResponse, "description": "The model or the bundle is not loaded, the bundle's filesystem is "
                                           "read-only or not writable, or another process held its write lock past "
                                           "CLIPSEARCH_WRITE_LOCK_TIMEOUT_S (then with Retry-After); nothing was "
                                           "written."}, 507: {
    "model": ErrorResponse, "description": "The disk that holds the bundle is full: the reason names its filesystem "
                                           "and the room left; nothing was written, and writes go through again by "
                                           "themselves once there is room."}}

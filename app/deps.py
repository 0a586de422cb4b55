"""Dependencies the routes declare: the loaded service, the settings, the metrics."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.access import ADMIN_KEY_HEADER, API_KEY_HEADER, Caller, caller_of
from app.metrics import Metrics
from app.settings import Settings
from app.state import ServiceState, Writes
from clipsearch.errors import CollectionNotFound
from clipsearch.search.bounds import Bounds
from clipsearch.search.service import SearchService
from clipsearch.store.keys import DEFAULT_COLLECTION


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service_state
    return state


def get_service(state: Annotated[ServiceState, Depends(get_state)]) -> SearchService:
    return state.require()


def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


def get_metrics(state: Annotated[ServiceState, Depends(get_state)]) -> Metrics:
    return state.metrics


_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description=(
    "Required when the server sets CLIPSEARCH_API_KEY or CLIPSEARCH_KEYS_FILE: that key, or a key made with "
    "`python -m indexer keys create`."))
_admin_key_header = APIKeyHeader(name=ADMIN_KEY_HEADER, scheme_name="AdminKeyHeader", auto_error=False, description=(
    "For writes, unless X-API-Key holds a write key: the key set on the server as CLIPSEARCH_ADMIN_KEY."))


# The gate (app.access) checks keys before a body is read; these dependencies declare the headers a
# route takes, for the OpenAPI schema, and hand the route the caller the gate let through.


def read_open(request: Request) -> Caller:
    """Any caller may read (no key is set), within the rate limit."""
    return caller_of(request.scope)


def read_with_key(request: Request, _: Annotated[str | None, Security(_api_key_header)]) -> Caller:
    return caller_of(request.scope)


def write_with_key(request: Request, _: Annotated[str | None, Security(_api_key_header)],
                   __: Annotated[str | None, Security(_admin_key_header)]) -> Caller:
    """Writes and admin routes take the same headers; the gate asks the scope each needs of them
    (app.access.required_scope)."""
    return caller_of(request.scope)


def get_writer(state: Annotated[ServiceState, Depends(get_state)]) -> Writes:
    return Writes(state, state.require_writer())


StateDep = Annotated[ServiceState, Depends(get_state)]
WriterDep = Annotated[Writes, Depends(get_writer)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def in_collection(collection: str) -> str:
    """The collection a /collections/{collection}/… route is for: the one this server serves."""
    if collection != DEFAULT_COLLECTION:
        raise CollectionNotFound(f"no collection named {collection!r} (this server serves: {DEFAULT_COLLECTION})",
                                 "collection")
    return collection


def get_bounds(request: Request) -> Bounds:
    """What the caller may see and change: the items its key's filter passes (all, for most callers)."""
    return _bounds_of(caller_of(request.scope).filter_json)


@lru_cache(maxsize=256)
def _bounds_of(filter_json: str | None) -> Bounds:
    return Bounds() if filter_json is None else Bounds.of(json.loads(filter_json))


BoundsDep = Annotated[Bounds, Depends(get_bounds)]

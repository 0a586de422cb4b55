"""Dependencies the routes declare: the server, the collection and its loaded service, the settings, the
metrics, the caller's bounds."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.access import ADMIN_KEY_HEADER, API_KEY_HEADER, Caller, caller_of
from app.metrics import Metrics
from app.server import ServerState
from app.settings import Settings
from app.state import CollectionState, Writes
from clipsearch.search.bounds import Bounds
from clipsearch.search.service import SearchService
from clipsearch.store.catalog import DEFAULT_COLLECTION


def get_server(request: Request) -> ServerState:
    server: ServerState = request.app.state.server
    return server


def get_state(request: Request, server: Annotated[ServerState, Depends(get_server)]) -> CollectionState:
    """The collection a route is for: /collections/{collection}/…, or the default one."""
    return server.collection(request.path_params.get("collection", DEFAULT_COLLECTION))


def get_service(state: Annotated[CollectionState, Depends(get_state)]) -> SearchService:
    return state.require()


def get_settings(server: Annotated[ServerState, Depends(get_server)]) -> Settings:
    return server.settings


def get_metrics(server: Annotated[ServerState, Depends(get_server)]) -> Metrics:
    return server.metrics


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


def get_writer(state: Annotated[CollectionState, Depends(get_state)]) -> Writes:
    return Writes(state, state.require_writer())


ServerDep = Annotated[ServerState, Depends(get_server)]
StateDep = Annotated[CollectionState, Depends(get_state)]
WriterDep = Annotated[Writes, Depends(get_writer)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def in_collection(collection: str, server: ServerDep) -> str:
    """The collection a /collections/{collection}/… route is for: one this server serves (else 404)."""
    server.collection(collection)
    return collection


def get_bounds(request: Request) -> Bounds:
    """What the caller may see and change: the items its key's filter passes (all, for most callers)."""
    return _bounds_of(caller_of(request.scope).filter_json)


@lru_cache(maxsize=256)
def _bounds_of(filter_json: str | None) -> Bounds:
    return Bounds() if filter_json is None else Bounds.of(json.loads(filter_json))


BoundsDep = Annotated[Bounds, Depends(get_bounds)]


def get_base_path(request: Request) -> str:
    """The path the request's collection's routes are under: '' for the default routes, else
    /collections/NAME (links in answers, such as a segment's thumbnail, are built on it)."""
    name = request.path_params.get("collection")
    return "" if name is None else f"/collections/{name}"


BasePathDep = Annotated[str, Depends(get_base_path)]

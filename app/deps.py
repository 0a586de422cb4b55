"""Dependencies the routes declare: the loaded service, the settings, the metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from app.errors import NotAuthenticated, WritesForbidden
from app.metrics import Metrics
from app.settings import Settings
from app.state import ServiceState, Writes
from clipsearch.search.service import SearchService


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service_state
    return state


def get_service(state: Annotated[ServiceState, Depends(get_state)]) -> SearchService:
    return state.require()


def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


def get_metrics(state: Annotated[ServiceState, Depends(get_state)]) -> Metrics:
    return state.metrics


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Required when the server sets CLIPSEARCH_API_KEY.")


def require_api_key(state: Annotated[ServiceState, Depends(get_state)],
                    given: Annotated[str | None, Security(_api_key_header)]) -> None:
    expected = state.settings.api_key
    if expected is not None and not _key_matches(given, expected):
        raise NotAuthenticated()


_admin_key_header = APIKeyHeader(name="X-Admin-Key", auto_error=False,
                                 description="Required for writes; set on the server as CLIPSEARCH_ADMIN_KEY.")


def require_admin_key(state: Annotated[ServiceState, Depends(get_state)],
                      given: Annotated[str | None, Security(_admin_key_header)]) -> None:
    expected = state.settings.admin_key
    if expected is None:
        raise WritesForbidden("writes are turned off: set CLIPSEARCH_ADMIN_KEY on the server to allow them",
                              "X-Admin-Key")
    if not _key_matches(given, expected):
        raise WritesForbidden("missing or wrong admin key", "X-Admin-Key")


def _key_matches(given: str | None, expected: SecretStr) -> bool:
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return given is not None and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def get_writer(state: Annotated[ServiceState, Depends(get_state)]) -> Writes:
    return Writes(state, state.require_writer())


StateDep = Annotated[ServiceState, Depends(get_state)]
WriterDep = Annotated[Writes, Depends(get_writer)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

"""Dependencies the routes declare: the loaded service, the settings, the metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.errors import NotAuthenticated
from app.metrics import Metrics
from app.settings import Settings
from app.state import ServiceState
from clipsearch.search import SearchService


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
    if expected is None:
        return
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if given is None or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise NotAuthenticated()


StateDep = Annotated[ServiceState, Depends(get_state)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

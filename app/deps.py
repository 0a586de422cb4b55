"""Dependencies the routes declare: the loaded service, the settings, the metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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


StateDep = Annotated[ServiceState, Depends(get_state)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

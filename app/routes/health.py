"""Liveness, readiness, what is served, and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import ServerDep, ServiceDep, StateDep
from app.errors import ServiceNotReady
from app.schemas import DiskInfo, ErrorResponse, InfoResponse, MemoryInfo, WritesInfo
from app.server import ServerState
from app.state import CollectionState
from clipsearch.modality import Modality

router = APIRouter(tags=["operations"])  # always open: probes must not need the API key
operations = APIRouter(tags=["operations"])
described = APIRouter(tags=["operations"])
"""/info, of each collection."""


@router.get("/health")
def health() -> dict[str, str]:
    """The process is alive (says nothing about the model or the bundle)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorResponse, "description": "Not ready, and why."}})
def ready(server: ServerDep) -> dict[str, str]:
    """200 once the collections are loaded (the default one served); 503 until then, or with the reason
    the default collection's bundle is unusable. Other collections' problems are at /collections."""
    if server.problem is not None:
        raise ServiceNotReady(f"not ready: {server.problem}")
    return {"status": "ready"}


@described.get("/info", responses={503: {"model": ErrorResponse}})
def info(service: ServiceDep, collection: StateDep, server: ServerDep) -> InfoResponse:
    """The model, the bundle's contents and indices, the device in use, and whether writes go through."""
    manifest = service.bundle.manifest
    state = service.collection.refresh()  # counts include live changes
    return InfoResponse(
        model=manifest.model.name, pretrained=manifest.model.pretrained,
        checkpoint_sha256=manifest.model.checkpoint_sha256, embedding_dim=manifest.embedding_dim,
        counts={modality: service.collection.count(modality, state) for modality in Modality
                if modality in manifest.modalities or service.collection.count(modality, state)},
        indices={modality: record.index for modality, record in manifest.modalities.items()},
        device=str(service.encoder.device), cuda_graphs=service.encoder.cuda_graphs,
        backend=service.encoder.backend, backend_cosine=service.encoder.backend_cosine,
        backend_startup_ms=service.encoder.backend_startup_ms,
        threads=service.encoder.threads,
        torch_weights=service.encoder.holds_torch_weights,
        text_trim=service.encoder.text_trim is not None,
        mean_batch=service.pipeline.mean_batches(), bundle_created_at=manifest.created_at,
        evaluations=manifest.evaluations, live_changes=state.changes,
        compactions=manifest.compactions, fusion=manifest.fusion, keyword_fields=manifest.keyword_fields,
        ocr=manifest.ocr, audio=manifest.audio, writes=_writes_info(collection), worker=os.getpid(),
        collection=collection.name, memory=_memory_info(collection, server))


def _memory_info(collection: CollectionState, server: ServerState) -> MemoryInfo:
    return MemoryInfo(collection_bytes=collection.memory_bytes(), collections_bytes=server.ledger.held(),
                      models_bytes={ref.describe(): encoder.weight_bytes
                                    for ref, encoder in server.models.loaded().items()},
                      budget_bytes=server.ledger.budget_bytes)


def _writes_info(state: CollectionState) -> WritesInfo:
    status = state.writes_status()
    refusal, space = status.refusal, status.space
    disk = None if space is None else DiskInfo(path=str(state.path), mount=str(space.mount),
                                               free_bytes=space.free_bytes, total_bytes=space.total_bytes,
                                               read_only=space.read_only)
    if refusal is None:
        return WritesInfo(enabled=status.enabled, accepted=True, disk=disk)
    return WritesInfo(enabled=status.enabled, accepted=False, refused=refusal.kind, reason=refusal.reason,
                      since=refusal.since, refusals=refusal.count, disk=disk)


@operations.get("/metrics", response_class=Response)
def metrics(server: ServerDep) -> Response:
    """Prometheus text format: requests and latency per endpoint, encode and search time."""
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

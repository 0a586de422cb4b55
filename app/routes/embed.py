"""Embeddings for clients that want the vectors themselves."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile

from app.deps import MetricsDep, ServiceDep
from app.routes.responses import ERRORS
from app.schemas import EmbeddingResponse, EmbedTextRequest
from clipsearch.search.query import QueryVector
from clipsearch.search.service import SearchService

router = APIRouter(prefix="/embed", tags=["embed"])


def _respond(service: SearchService, query: QueryVector) -> EmbeddingResponse:
    return EmbeddingResponse(embedding=query.vector.tolist(), dim=len(query.vector),
                             model=service.encoder.ref.describe(), truncated=bool(query.truncated))


@router.post("/text", responses=ERRORS)
def embed_text(request: EmbedTextRequest, service: ServiceDep, metrics: MetricsDep) -> EmbeddingResponse:
    """The unit embedding of a text, in the bundle's vector space."""
    query = service.embed_text(request.text)
    metrics.observe_encodings(query)
    return _respond(service, query)


@router.post("/image", responses=ERRORS)
def embed_image(file: UploadFile, service: ServiceDep, metrics: MetricsDep) -> EmbeddingResponse:
    """The unit embedding of an uploaded image (multipart field `file`)."""
    query = service.embed_image(file.file.read())
    metrics.observe_encodings(query)
    return _respond(service, query)

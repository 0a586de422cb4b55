"""Searches: by text, by an uploaded image, and by a weighted mix of texts, images and items."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, UploadFile

from app.deps import MetricsDep, ServiceDep
from app.errors import api_field
from app.routes.responses import ERRORS
from app.schemas import (
    ComposedSearchRequest,
    HitModel,
    SearchResponse,
    TextSearchRequest,
    result_options,
)
from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.search.query import ResultOptions
from clipsearch.search.results import Answer

router = APIRouter(tags=["search"])



def _respond(answer: Answer, started: float, options: ResultOptions,
             shares: list[list[float]] | None = None) -> SearchResponse:
    truncated = [] if answer.query is None else [api_field(name) for name in answer.query.truncated]
    results = [HitModel.of(hit, shares[number] if shares is not None else None, options.dedup is not None)
               for number, hit in enumerate(answer.hits)]
    return SearchResponse(results=results, matched=answer.matched, more=answer.more, truncated=truncated,
                          took_ms=round((time.perf_counter() - started) * 1000, 3))


@router.post("/search/text", responses=ERRORS)
def search_text(request: TextSearchRequest, service: ServiceDep, metrics: MetricsDep) -> SearchResponse:
    """Find the items most similar to a text: text→image, or text→text with `target: "text"`; by
    embedding, by keyword, or both (`mode`)."""
    started = time.perf_counter()
    options = request.options()
    answer = service.search_text(request.text, request.target, request.k, options=options, ranking=request.ranking())
    metrics.observe_answer(answer, request.target)
    return _respond(answer, started, options)


@router.post("/search/image", responses=ERRORS)
def search_image(file: UploadFile, service: ServiceDep, metrics: MetricsDep,
                 target: Annotated[Modality, Form()] = Modality.IMAGE,
                 k: Annotated[int, Form(ge=1)] = 10,
                 filter: Annotated[str | None, Form(description="A filter as in /search/text, as JSON text.")] = None,
                 offset: Annotated[int, Form(ge=0)] = 0,
                 dedup: Annotated[str | None, Form(description="'true', or a cosine threshold in (0, 1].")] = None,
                 fusion: Annotated[str | None, Form(description="Image, caption and ocr weights as in /search/text, "
                                                                "as JSON text.")] = None,
                 ) -> SearchResponse:
    """Find the items most similar to an uploaded image (multipart field `file`): image→image or image→text."""
    started = time.perf_counter()
    options = result_options(_form_json(filter, "filter"), offset, _form_dedup(dedup), _form_json(fusion, "fusion"))
    data = file.file.read()  # held in memory: the multipart parser is told not to spool uploads to disk
    answer = service.search_image(data, target, k, options=options)
    metrics.observe_answer(answer, target)
    return _respond(answer, started, options)


@router.post("/search", responses=ERRORS)
def search_composed(request: ComposedSearchRequest, service: ServiceDep, metrics: MetricsDep) -> SearchResponse:
    """Search with the renormalised weighted sum of several terms' embeddings.

    For example an image, plus "at night", minus "people". Weights may be negative.
    """
    started = time.perf_counter()
    options = request.options()
    service.check_target(request.target, request.k, options)
    query = service.embed_terms([term.to_term() for term in request.queries])
    answer = service.search_vector(query, request.target, request.k, options)
    metrics.observe_answer(answer, request.target)
    shares = None
    if request.explain:
        # One share per term as given; a zero-weight term was never embedded and contributes 0.
        computed = iter(service.term_shares(query, answer.hits, service.fusion_for(request.target, options)).T.tolist())
        by_term = [next(computed) if term.weight != 0 else [0.0] * len(answer.hits) for term in request.queries]
        shares = [list(row) for row in zip(*by_term, strict=True)] if answer.hits else []
    return _respond(answer, started, options, shares)


def _form_json(value: str | None, field: str) -> Any:
    if value is None or not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise InvalidQuery(field, f"not valid JSON ({error})") from None


def _form_dedup(value: str | None) -> bool | float | None:
    if value is None or value.strip().lower() in ("", "false"):
        return None
    if value.strip().lower() == "true":
        return True
    try:
        return float(value)
    except ValueError:
        raise InvalidQuery("dedup", f"must be 'true', 'false' or a cosine threshold, got {value!r}") from None

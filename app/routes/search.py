"""Searches: by text, by an uploaded image, and by a weighted mix of texts, images and items."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, UploadFile

from app.deps import BasePathDep, BoundsDep, MetricsDep, ServerDep, ServiceDep
from app.errors import api_field
from app.routes.responses import ERRORS
from app.schemas import (
    AskedModel,
    ComposedSearchRequest,
    HitModel,
    SearchResponse,
    TextSearchRequest,
    result_options,
)
from app.server import ServerState
from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.search.asking import AskedHits, HitQuestion, answer_hits
from clipsearch.search.query import ResultOptions
from clipsearch.search.results import Answer
from clipsearch.search.service import SearchService

router = APIRouter(tags=["search"])


def _question(server: ServerState, ask: str | None, keep: str | None, k: int) -> HitQuestion | None:
    """The search's `ask`, checked before the search runs; `ask_filter` without `ask` is refused."""
    if ask is None:
        if keep is not None:
            raise InvalidQuery("ask_filter", "needs a question in ask")
        return None
    return HitQuestion.checked(server.answers, ask, keep, k)


def _ask(question: HitQuestion | None, answer: Answer, server: ServerState, service: SearchService
         ) -> AskedHits | None:
    if question is None:
        return None
    max_pixels = service.limits.max_pixels
    return answer_hits(server.answers, question, answer.hits,
                       lambda item_id: service.collection.read_image(item_id, "ask", max_pixels))


def _respond(answer: Answer, started: float, options: ResultOptions, base: str,
             shares: list[list[float]] | None = None, asked: AskedHits | None = None) -> SearchResponse:
    truncated = [] if answer.query is None else [api_field(name) for name in answer.query.truncated]
    kept = {id(hit) for hit in (answer.hits if asked is None else asked.hits)}
    answers = {} if asked is None else asked.answers
    results = [HitModel.of(hit, shares[number] if shares is not None else None, options.dedup is not None,
                           answers.get(hit.item.id), base)
               for number, hit in enumerate(answer.hits) if id(hit) in kept]
    summary = None if asked is None else AskedModel(question=asked.question, model=asked.model,
                                                    answered=len(asked.answers), dropped=asked.dropped)
    return SearchResponse(results=results, matched=answer.matched, more=answer.more, truncated=truncated,
                          asked=summary, took_ms=round((time.perf_counter() - started) * 1000, 3))


@router.post("/search/text", responses=ERRORS)
def search_text(request: TextSearchRequest, service: ServiceDep, metrics: MetricsDep,
                server: ServerDep, bounds: BoundsDep, base: BasePathDep) -> SearchResponse:
    """Find the items most similar to a text: text→image, or text→text with `target: "text"`; by
    embedding, by keyword, or both (`mode`). With `ask`, each image result's answer to a question."""
    started = time.perf_counter()
    options = bounds.options(request.options())
    question = _question(server, request.ask, request.ask_filter, request.k)
    answer = service.search_text(request.text, request.target, request.k, options=options, ranking=request.ranking())
    metrics.observe_answer(answer, request.target)
    return _respond(answer, started, options, base, asked=_ask(question, answer, server, service))


@router.post("/search/image", responses=ERRORS)
def search_image(file: UploadFile, service: ServiceDep, metrics: MetricsDep, server: ServerDep, bounds: BoundsDep,
                 base: BasePathDep,
                 target: Annotated[Modality, Form()] = Modality.IMAGE,
                 k: Annotated[int, Form(ge=1)] = 10,
                 filter: Annotated[str | None, Form(description="A filter as in /search/text, as JSON text.")] = None,
                 offset: Annotated[int, Form(ge=0)] = 0,
                 dedup: Annotated[str | None, Form(description="'true', or a cosine threshold in (0, 1].")] = None,
                 fusion: Annotated[str | None, Form(description="Image, caption and ocr weights as in /search/text, "
                                                                "as JSON text.")] = None,
                 min_score: Annotated[float | None, Form(description="Only results scoring this or more, as in "
                                                                     "/search/text.")] = None,
                 order_by: Annotated[str | None, Form(description="An order as in /search/text, as JSON text: "
                                                                  '{"key": "taken_at", "direction": "desc"}.')
                                     ] = None,
                 ask: Annotated[str | None, Form(description="A question about each image result, as in "
                                                             "/search/text.")] = None,
                 ask_filter: Annotated[str | None, Form(description="Keep only the results with this answer.")
                                       ] = None,
                 group_by: Annotated[Literal["item", "segments"], Form(description=(
                     "For video results: each video once ('item') or every segment found ('segments'), as in "
                     "/search/text."))] = "item",
                 ) -> SearchResponse:
    """Find the items most similar to an uploaded image (multipart field `file`): image→image or image→text."""
    started = time.perf_counter()
    options = bounds.options(result_options(_form_json(filter, "filter"), offset, _form_dedup(dedup),
                                            _form_json(fusion, "fusion"), min_score, _form_json(order_by, "order_by"),
                                            group_by))
    question = _question(server, ask, ask_filter, k)
    data = file.file.read()  # held in memory: the multipart parser is told not to spool uploads to disk
    answer = service.search_image(data, target, k, options=options)
    metrics.observe_answer(answer, target)
    return _respond(answer, started, options, base, asked=_ask(question, answer, server, service))


@router.post("/search/audio", responses=ERRORS)
def search_audio(file: UploadFile, service: ServiceDep, metrics: MetricsDep, bounds: BoundsDep, base: BasePathDep,
                 target: Annotated[Modality, Form(description="Sounds only: 'audio'.")] = Modality.AUDIO,
                 k: Annotated[int, Form(ge=1)] = 10,
                 filter: Annotated[str | None, Form(description="A filter as in /search/text, as JSON text.")] = None,
                 offset: Annotated[int, Form(ge=0)] = 0,
                 dedup: Annotated[str | None, Form(description="'true', or a cosine threshold in (0, 1].")] = None,
                 min_score: Annotated[float | None, Form(description="Only results scoring this or more, as in "
                                                                     "/search/text.")] = None,
                 order_by: Annotated[str | None, Form(description="An order as in /search/text, as JSON text.")
                                     ] = None,
                 group_by: Annotated[Literal["item", "segments"], Form(description=(
                     "Each sound once ('item') or every window found ('segments'), as in /search/text."))] = "item",
                 ) -> SearchResponse:
    """Find the sounds most like an uploaded clip (multipart field `file`: WAV, FLAC, MP3, Ogg or M4A, at most
    CLIPSEARCH_MAX_QUERY_AUDIO_S long): audio→audio, in the audio model's space."""
    started = time.perf_counter()
    options = bounds.options(result_options(_form_json(filter, "filter"), offset, _form_dedup(dedup), None,
                                            min_score, _form_json(order_by, "order_by"), group_by))
    data = file.file.read()  # held in memory, as an image query's is
    answer = service.search_audio(data, target, k, options=options)
    metrics.observe_answer(answer, target)
    return _respond(answer, started, options, base)


@router.post("/search", responses=ERRORS)
def search_composed(request: ComposedSearchRequest, service: ServiceDep, metrics: MetricsDep,
                    server: ServerDep, bounds: BoundsDep, base: BasePathDep) -> SearchResponse:
    """Search with the renormalised weighted sum of several terms' embeddings.

    For example an image, plus "at night", minus "people". Weights may be negative.
    """
    started = time.perf_counter()
    options = bounds.options(request.options())
    service.check_target(request.target, request.k, options)
    question = _question(server, request.ask, request.ask_filter, request.k)
    terms = [term.to_term() for term in request.queries]
    bounds.check_terms(service.collection, terms, "terms")
    query = service.embed_terms(terms)
    answer = service.search_vector(query, request.target, request.k, options)
    metrics.observe_answer(answer, request.target)
    shares = None
    if request.explain:
        # One share per term as given; a zero-weight term was never embedded and contributes 0.
        computed = iter(service.term_shares(query, answer.hits, service.fusion_for(request.target, options)).T.tolist())
        by_term = [next(computed) if term.weight != 0 else [0.0] * len(answer.hits) for term in request.queries]
        shares = [list(row) for row in zip(*by_term, strict=True)] if answer.hits else []
    return _respond(answer, started, options, base, shares, _ask(question, answer, server, service))


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

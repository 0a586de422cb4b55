"""Why an image matched a query: a patch-level similarity map over the image."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter

from app.deps import BoundsDep, MetricsDep, ServiceDep
from app.errors import api_field
from app.routes.responses import ERRORS
from app.understanding_schemas import ExplainRequest, ExplainResponse, HeatmapModel

router = APIRouter(tags=["explain"])


@router.post("/explain", responses=ERRORS)
def explain(request: ExplainRequest, service: ServiceDep, metrics: MetricsDep, bounds: BoundsDep) -> ExplainResponse:
    """Where in each image item the query (text, image, item or a weighted mix) lights up.

    One extra image forward per item, batched; the grid is the model's patch grid.
    """
    started = time.perf_counter()
    terms = [term.to_term() for term in request.queries]
    bounds.check_terms(service.collection, terms, "queries")
    for number, item_id in enumerate(request.item_ids):
        bounds.item(service.collection, item_id, f"item_ids[{number}]")
    query = service.embed_terms(terms, field="queries")
    metrics.observe_encodings(query)
    heatmaps = service.heatmaps(query, request.item_ids)
    results = [HeatmapModel(item_id=item_id,
                            score=float(service.collection.stored_vector(item_id, "item_ids") @ query.vector),
                            grid=heatmap.grid.round(5).tolist(),
                            overlay_png_b64=base64.b64encode(heatmap.overlay_png()).decode() if request.overlay
                            else None)
               for item_id, heatmap in zip(request.item_ids, heatmaps, strict=True)]
    return ExplainResponse(method=heatmaps[0].method, results=results,
                           truncated=[api_field(name) for name in query.truncated],
                           took_ms=round((time.perf_counter() - started) * 1000, 3))

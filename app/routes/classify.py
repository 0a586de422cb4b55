"""Zero-shot classification: score an image against the user's own labels."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Form, UploadFile

from app.deps import BoundsDep, MetricsDep, ServiceDep
from app.routes.responses import ERRORS
from app.understanding_schemas import ClassifyRequest, ClassifyResponse, LabelScoreModel
from clipsearch.search.service import SearchService

router = APIRouter(prefix="/classify", tags=["classify"])


def _respond(service: SearchService, vector: np.ndarray, labels: list[str], templates: list[str] | None,
             multi_label: bool, started: float) -> ClassifyResponse:
    scores = service.classify(vector, labels, templates, multi_label)
    return ClassifyResponse(labels=[LabelScoreModel(label=score.label, probability=score.probability,
                                                    cosine=score.cosine) for score in scores],
                            multi_label=multi_label, calibration=service.classifier.calibration.kind,
                            took_ms=round((time.perf_counter() - started) * 1000, 3))


@router.post("", responses=ERRORS)
def classify(request: ClassifyRequest, service: ServiceDep, metrics: MetricsDep, bounds: BoundsDep) -> ClassifyResponse:
    """Every label's probability for an image (`image_b64`, or an image item's `item_id`), best first."""
    started = time.perf_counter()
    data = request.image_bytes
    if data is None:
        assert request.item_id is not None
        bounds.item(service.collection, request.item_id, "item_id")
        vector = service.image_item_vector(request.item_id)
    else:
        query = service.embed_image(data, field="image_b64")
        metrics.observe_encodings(query)
        vector = query.vector
    return _respond(service, vector, request.labels, request.templates, request.multi_label, started)


@router.post("/image", responses=ERRORS)
def classify_upload(file: UploadFile, labels: Annotated[list[str], Form()], service: ServiceDep,
                    metrics: MetricsDep, templates: Annotated[list[str] | None, Form()] = None,
                    multi_label: Annotated[bool, Form()] = False) -> ClassifyResponse:
    """The same for an uploaded image (multipart field `file`; repeat `labels` once per label)."""
    started = time.perf_counter()
    query = service.embed_image(file.file.read(), field="file")
    metrics.observe_encodings(query)
    return _respond(service, query.vector, labels, templates, multi_label, started)

"""Questions about an image, answered by a question-answering model (BLIP): an upload or an image item."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Form, UploadFile
from PIL import Image

from app.deps import BoundsDep, ServerDep, ServiceDep
from app.routes.responses import ERRORS
from app.server import ServerState
from app.understanding_schemas import AskRequest, AskResponse

router = APIRouter(prefix="/ask", tags=["ask"])


def _respond(server: ServerState, image: Image.Image, question: str, started: float) -> AskResponse:
    answer = server.answers.ask([image], question)[0]
    answerer = server.answers.loaded
    assert answerer is not None  # ask() loaded it
    return AskResponse(answer=answer.text, score=answer.score, model=answerer.description,
                       took_ms=round((time.perf_counter() - started) * 1000, 3))


@router.post("", responses=ERRORS)
def ask(request: AskRequest, service: ServiceDep, server: ServerDep, bounds: BoundsDep) -> AskResponse:
    """A short answer to a question about an image (`image_b64`, or an image item's `item_id`).

    The model loads on the first question, which waits for it up to the server's vqa_timeout_s; a
    request that finds it still loading (a first download) is answered 503, to retry.
    """
    started = time.perf_counter()
    server.answers.check(request.question)  # before the image is decoded: a bad question costs nothing
    data = request.image_bytes
    if data is None:
        assert request.item_id is not None
        bounds.item(service.collection, request.item_id, "item_id")
        image = service.collection.read_image(request.item_id, "item_id", service.limits.max_pixels)
    else:
        image = service.uploads.image(data, "image_b64")
    return _respond(server, image, request.question, started)


@router.post("/image", responses=ERRORS)
def ask_upload(file: UploadFile, question: Annotated[str, Form(description="A question about the image, in English.")],
               service: ServiceDep, server: ServerDep) -> AskResponse:
    """The same for an uploaded image (multipart fields `file` and `question`)."""
    started = time.perf_counter()
    server.answers.check(question)
    return _respond(server, service.uploads.image(file.file.read(), "file"), question, started)

"""The collections this server serves: listed, made and dropped (admin), and a collection as a whole:
its snapshot (admin)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from app.access import caller_of
from app.deps import ServerDep, ServiceDep, SettingsDep, in_collection, write_with_key
from app.routes.responses import ERRORS, WRITE_ERRORS
from app.state import CollectionState
from clipsearch.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelRef, default_pretrained
from clipsearch.modality import Modality
from clipsearch.store.bundle.snapshot import take_snapshot

router = APIRouter(prefix="/collections", tags=["collections"])


class CollectionModel(BaseModel):
    name: str = Field(description="Its routes are /collections/{name}/…; today's routes without the prefix are "
                                  "the default collection's.")
    ready: bool = Field(description="Whether it is served now; if not, `problem` says why.")
    problem: str | None = Field(None, description="Why it is not served: still loading, over the memory budget, a "
                                                  "damaged bundle, …")
    model: str | None = Field(None, description="The model its vectors were made with (null until loaded).")
    counts: dict[Modality, int] = Field(default_factory=dict, description="Items of each modality, live changes "
                                                                         "included.")
    live_changes: int = Field(0, description="Live items and hidden base items not yet folded into the base.")
    memory_bytes: int = Field(0, description="What its indices hold in memory (its FAISS files and live vectors).")


class NewCollection(BaseModel):
    model: str | None = Field(None, max_length=200, description="The open_clip model its items are embedded with; "
                                                               "default: the default collection's model and weights.")
    pretrained: str | None = Field(None, max_length=200, description="Its pretrained tag (default: the model's own, "
                                   f"{DEFAULT_PRETRAINED} for {DEFAULT_MODEL}; none for most others); 'none' for "
                                   "random weights.")

    def model_ref(self) -> ModelRef | None:
        if self.model is None:
            return None
        pretrained = default_pretrained(self.model) if self.pretrained is None else self.pretrained
        return ModelRef(self.model, None if pretrained in ("none", "") else pretrained)


def _described(state: CollectionState) -> CollectionModel:
    service = state.service
    if service is None:
        return CollectionModel(name=state.name, ready=False, problem=state.problem)
    live = service.collection.refresh()
    counts = {modality: service.collection.count(modality, live) for modality in Modality}
    return CollectionModel(name=state.name, ready=True, model=service.encoder.ref.describe(),
                           counts={modality: count for modality, count in counts.items() if count},
                           live_changes=live.changes, memory_bytes=state.memory_bytes())


@router.get("", responses=ERRORS)
def list_collections(server: ServerDep, request: Request) -> list[CollectionModel]:
    """The collections this server serves (those the caller's key may use), the default first."""
    key = caller_of(request.scope).key
    return [_described(state) for state in server.collections() if key is None or key.allows(state.name)]


@router.put("/{collection}", status_code=201, dependencies=[Depends(write_with_key)],
            responses={200: {"model": CollectionModel, "description": "It existed already, with this model."},
                       409: {"description": "It exists with another model, or this server serves one bundle."},
                       **WRITE_ERRORS})
def create_collection(collection: str, server: ServerDep, response: Response,
                      new: Annotated[NewCollection | None, Body()] = None) -> CollectionModel:
    """Make an empty collection (admin), served at once by this worker and within CLIPSEARCH_RELOAD_POLL_S by the
    others; fill it with writes, `indexer build --collection NAME` or `indexer sync`. Making one that exists with
    the same model changes nothing (200)."""
    created, state = server.create(collection, None if new is None else new.model_ref())
    if not created:
        response.status_code = 200
    return _described(state)


@router.delete("/{collection}", status_code=204, response_class=Response, dependencies=[Depends(write_with_key)],
               responses={409: {"description": "The default collection, or a server of one bundle."},
                          **WRITE_ERRORS})
def drop_collection(collection: str, server: ServerDep) -> Response:
    """Delete a collection (admin): its items, live changes and uploads, for good; requests already under way
    finish first. The default collection cannot be dropped."""
    server.drop(collection)
    return Response(status_code=204)


@router.post("/{collection}/snapshot", response_class=FileResponse, dependencies=[Depends(write_with_key)],
             responses={200: {"content": {"application/x-tar": {}}, "description": "The archive: `python -m "
                                                                                     "indexer restore` brings it "
                                                                                     "back, verified."},
                        **WRITE_ERRORS})
def snapshot(collection: Annotated[str, Depends(in_collection)], service: ServiceDep,
             settings: SettingsDep) -> FileResponse:
    """A consistent archive of the collection (its base, live changes and uploaded images), taken while
    it is written to: writes wait while the copy is made (usually milliseconds: files are hard-linked).
    """
    folder = Path(tempfile.mkdtemp(prefix="clipsearch-snapshot-"))  # $TMPDIR: where there is room for it
    try:
        archive = folder / f"{collection}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar"
        info = take_snapshot(service.bundle.path, archive, settings.write_lock_timeout_s)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(info.path, media_type="application/x-tar", filename=info.path.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

"""The collections this server serves, and a collection as a whole: its snapshot (admin)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from app.deps import ServiceDep, SettingsDep, in_collection, write_with_key
from app.routes.responses import ERRORS, WRITE_ERRORS
from clipsearch.modality import Modality
from clipsearch.store.bundle.snapshot import take_snapshot
from clipsearch.store.keys import DEFAULT_COLLECTION

router = APIRouter(prefix="/collections", tags=["collections"])


class CollectionModel(BaseModel):
    name: str = Field(description="Its routes are /collections/{name}/…; today's routes without the prefix are "
                                  "the default collection's.")
    model: str
    counts: dict[Modality, int] = Field(description="Items of each modality, live changes included.")
    live_changes: int = Field(description="Live items and hidden base items not yet folded into the base.")


@router.get("", responses=ERRORS)
def list_collections(service: ServiceDep) -> list[CollectionModel]:
    """The collections this server serves (one, `default`, today)."""
    state = service.collection.refresh()
    counts = {modality: service.collection.count(modality, state) for modality in Modality}
    return [CollectionModel(name=DEFAULT_COLLECTION, model=service.encoder.ref.describe(),
                            counts={modality: count for modality, count in counts.items() if count},
                            live_changes=state.changes)]


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

"""A collection as a whole: its snapshot, from the running server (admin)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.deps import ServiceDep, SettingsDep, admin_with_key
from app.routes.responses import WRITE_ERRORS
from clipsearch.errors import CollectionNotFound
from clipsearch.store.bundle.snapshot import take_snapshot
from clipsearch.store.keys import DEFAULT_COLLECTION

router = APIRouter(prefix="/collections", tags=["collections"])


@router.post("/{name}/snapshot", response_class=FileResponse, dependencies=[Depends(admin_with_key)], responses={
    200: {"content": {"application/x-tar": {}}, "description": "The archive: `python -m indexer restore` brings "
                                                               "it back, verified."}, **WRITE_ERRORS})
def snapshot(name: str, service: ServiceDep, settings: SettingsDep) -> FileResponse:
    """A consistent archive of the collection (its base, live changes and uploaded images), taken while
    it is written to: writes wait while the copy is made (usually milliseconds: files are hard-linked).
    """
    if name != DEFAULT_COLLECTION:
        raise CollectionNotFound(f"no collection named {name!r} (this server serves: {DEFAULT_COLLECTION})", "name")
    folder = Path(tempfile.mkdtemp(prefix="clipsearch-snapshot-"))  # $TMPDIR: where there is room for it
    try:
        archive = folder / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar"
        info = take_snapshot(service.bundle.path, archive, settings.write_lock_timeout_s)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(info.path, media_type="application/x-tar", filename=info.path.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

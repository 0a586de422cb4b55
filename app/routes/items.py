"""Items of the bundle: their metadata and, for images, the image itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse
from PIL import Image

from app.deps import ServiceDep
from app.routes.search import ERRORS
from app.schemas import MAX_ITEM_ID, ItemModel

ItemId = Annotated[int, Path(ge=0, le=MAX_ITEM_ID, description="An item's id, as search results give it.")]

router = APIRouter(prefix="/items", tags=["items"])


@router.get("/{item_id}", responses=ERRORS)
def get_item(item_id: ItemId, service: ServiceDep) -> ItemModel:
    """An item's metadata."""
    return ItemModel.of(service.collection.item(item_id))


@router.get("/{item_id}/image", response_class=FileResponse, responses={
    200: {"content": {"image/*": {}}, "description": "The image file, as indexed."}, **ERRORS})
def get_item_image(item_id: ItemId, service: ServiceDep) -> FileResponse:
    """The image file of an image item. Only files recorded in the bundle are ever served."""
    path = service.collection.image_path(item_id)
    try:
        with Image.open(path) as image:  # reads the header only, to name the real format
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, SyntaxError, ValueError):  # the file changed since indexing; still serve its bytes
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})

"""Items of the collection: their metadata and, for images, videos and sounds, the file itself (a
video's frames too); and writes (add, replace by key, edit, delete), which need the admin key."""

from __future__ import annotations

import io
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile

from app.deps import BoundsDep, ServiceDep, WriterDep, write_with_key
from app.item_schemas import AddTextsRequest, DeleteItemsRequest, DeleteResponse, EditItemRequest, WriteResponse
from app.routes.responses import ERRORS, WRITE_ERRORS
from app.schemas import MAX_ITEM_ID, ItemModel
from clipsearch.config import VideoSampling
from clipsearch.errors import InvalidQuery, ItemNotFound, VideoDecodeError, VideoTooLarge
from clipsearch.modality import Modality
from clipsearch.search.writes import UNCHANGED, ImageEntry, TextEntry
from clipsearch.store.filters import parse_filter
from clipsearch.store.segments import AUDIO_KEY, VIDEO_KEY, is_sound_of_video
from clipsearch.util.audio import audio_media_type, looks_like_audio
from clipsearch.util.media import MEDIA_HEAD_BYTES
from clipsearch.util.video import frame_at, looks_like_video, video_media_type

ItemId = Annotated[int, Path(ge=0, le=MAX_ITEM_ID, description="An item's id, as search results give it.")]



class ItemIdSegment(Convertor[str]):
    """An item id's path segment: anything but `delete`, which is the bulk delete's own path
    (POST /items/delete), so that GET /items/delete is a 405 and not a malformed id. The value is
    still validated as an integer by the route, so `/items/abc` stays a 422 naming `item_id`."""

    regex = "(?!delete(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", ItemIdSegment())
router = APIRouter(prefix="/items", tags=["items"])


@router.get("/{item_id:item_id}", responses=ERRORS)
def get_item(item_id: ItemId, service: ServiceDep, bounds: BoundsDep) -> ItemModel:
    """An item's metadata."""
    return ItemModel.of(bounds.item(service.collection, item_id))


@router.get("/{item_id:item_id}/image", response_class=FileResponse, responses={
    200: {"content": {"image/*": {}}, "description": "The image file, as indexed."}, **ERRORS})
def get_item_image(item_id: ItemId, service: ServiceDep, bounds: BoundsDep) -> FileResponse:
    """The image file of an image item. Only files recorded in the bundle are ever served."""
    bounds.item(service.collection, item_id)
    path = service.collection.file_path(item_id)
    try:
        with Image.open(path) as image:  # reads the header only, to name the real format
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, SyntaxError, ValueError):  # the file changed since indexing; still serve its bytes
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/{item_id:item_id}/video", response_class=FileResponse, responses={
    200: {"content": {"video/*": {}}, "description": "The video file, as indexed."},
    206: {"content": {"video/*": {}}, "description": "The byte range asked for (header Range), so that a player "
                                                     "can seek."}, **ERRORS})
def get_item_video(item_id: ItemId, service: ServiceDep, bounds: BoundsDep) -> FileResponse:
    """The video file of a video item, with Range requests answered (a browser seeks in it). Only
    files recorded in the bundle are ever served."""
    item = bounds.item(service.collection, item_id)
    path = service.collection.file_path(item_id, modality=Modality.VIDEO)
    record = item.extra.get(VIDEO_KEY)
    family = record.get("container") if isinstance(record, dict) else None
    return FileResponse(path, media_type=video_media_type(path, family if isinstance(family, str) else None),
                        headers={"Cache-Control": "public, max-age=3600"})


@router.get("/{item_id:item_id}/audio", response_class=FileResponse, responses={
    200: {"content": {"audio/*": {}}, "description": "The sound file, as indexed."},
    206: {"content": {"audio/*": {}}, "description": "The byte range asked for (header Range), so that a player "
                                                     "can seek."}, **ERRORS})
def get_item_audio(item_id: ItemId, service: ServiceDep, bounds: BoundsDep) -> FileResponse:
    """The sound file of a sound item, with Range requests answered (a browser seeks in it); for a
    video's sound track, the video file, as a video. Only files recorded in the bundle are ever served."""
    item = bounds.item(service.collection, item_id)
    path = service.collection.file_path(item_id, modality=Modality.AUDIO)
    record = item.extra.get(AUDIO_KEY)
    container = record.get("container") if isinstance(record, dict) else None
    media_type = video_media_type(path, container if isinstance(container, str) else None) \
        if is_sound_of_video(item.extra) else audio_media_type(str(container))
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/{item_id:item_id}/frame", responses={
    200: {"content": {"image/jpeg": {}}, "description": "The frame, at most 448 pixels on its longer side."},
    **ERRORS})
def get_item_frame(item_id: ItemId, service: ServiceDep, bounds: BoundsDep,
                   at: Annotated[float, Query(ge=0, allow_inf_nan=False, description=(
                       "Seconds into the video; a segment's `thumbnail` gives its start."))] = 0.0) -> Response:
    """The frame a video item shows at `at` seconds, as a JPEG (a segment's thumbnail)."""
    bounds.item(service.collection, item_id)
    path = service.collection.file_path(item_id, "id", Modality.VIDEO)
    duration = service.collection.item(item_id).extra.get(VIDEO_KEY, {}).get("duration_s")
    if isinstance(duration, int | float) and at > duration:
        raise InvalidQuery("at", f"the video is {duration:g} s long, got {at:g}")
    try:
        # Bounded as a query's upload is: a request never waits on one video for long.
        frame = frame_at(path, at, VideoSampling(decode_timeout_s=service.limits.decode_timeout_s))
    except VideoTooLarge:  # past a bound (its size, the time it took): said as such, not as a file gone
        raise
    except VideoDecodeError as error:
        raise ItemNotFound(item_id, "id", f"its video file no longer decodes ({error.reason})") from error
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=85)
    return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})


admin = [Depends(write_with_key)]


@router.post("", responses=WRITE_ERRORS, dependencies=admin, openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/AddTextsRequest"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "key": {"type": "array", "items": {"type": "string"}},
        "caption": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "array", "items": {"type": "string", "description": "a JSON object"}}}}}}}})
async def add_items(request: Request, writer: WriterDep, service: ServiceDep, bounds: BoundsDep) -> WriteResponse:
    """Add items, or replace them by key (same id, new vector and metadata).

    Texts as JSON: `{"items": [{"text", "key", "metadata"}]}`. Images, videos and sounds (told apart
    by their content) as multipart: one `file` field per file, and optionally as many `key`, `caption` and
    `metadata` (JSON) fields, matched to the files in order. Embedded through the model's batches
    like queries; applied all or nothing, and answered once durable.
    """
    started = time.perf_counter()
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=writer.limits.max_items + 1,
                                max_fields=4 * writer.limits.max_items + 4) as form:  # closes the uploads after
            entries = _image_entries(form)
        for number, image in enumerate(entries):
            head = image.data[:MEDIA_HEAD_BYTES]
            modality = Modality.VIDEO if looks_like_video(head) else Modality.AUDIO if looks_like_audio(head) \
                else Modality.IMAGE
            bounds.check_new(service.collection, modality, image.caption, image.metadata, f"file[{number}]",
                             image.key)
        ids = await run_in_threadpool(writer.add_images, entries, "file")
    else:
        try:
            body = AddTextsRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise RequestValidationError([{**entry, "loc": ("body", *entry["loc"])} for entry in error.errors()]) \
                from None
        texts = [TextEntry(item.text, item.key, item.metadata) for item in body.items]
        for number, text in enumerate(texts):
            bounds.check_new(service.collection, Modality.TEXT, text.text, text.metadata, f"items[{number}]",
                             text.key)
        ids = await run_in_threadpool(writer.add_texts, texts)
    return WriteResponse(ids=ids, took_ms=_since(started))


@router.patch("/{item_id:item_id}", responses=WRITE_ERRORS, dependencies=admin)
def edit_item(item_id: ItemId, request: EditItemRequest, writer: WriterDep, service: ServiceDep,
              bounds: BoundsDep) -> ItemModel:
    """Change an image's caption, a text's text (embedded again) or any item's metadata; other fields stay."""
    given = request.model_fields_set
    if not given:
        raise InvalidQuery("body", "give at least one of caption, text and metadata")
    if "text" in given and request.text is None:
        raise InvalidQuery("text", "a text item's text cannot be removed; delete the item instead")
    item = bounds.item(service.collection, item_id, "item_id")
    changed_text = request.caption if "caption" in given else request.text if "text" in given else item.text
    bounds.check_new(service.collection, item.modality, changed_text,
                     (request.metadata or {}) if "metadata" in given else item.extra, "")
    return ItemModel.of(writer.update(
        item_id, caption=request.caption if "caption" in given else UNCHANGED,
        text=request.text if "text" in given and request.text is not None else UNCHANGED,
        metadata=(request.metadata or {}) if "metadata" in given else UNCHANGED))


@router.delete("/{item_id:item_id}", responses=WRITE_ERRORS, dependencies=admin)
def delete_item(item_id: ItemId, writer: WriterDep, service: ServiceDep, bounds: BoundsDep) -> DeleteResponse:
    """Delete one item; 404 if there is no such item."""
    started = time.perf_counter()
    bounds.item(service.collection, item_id, "item_id")
    deleted = writer.delete([item_id], "item_id")
    if not deleted:
        writer.item(item_id, "item_id")  # raises the 404
    return DeleteResponse(deleted=deleted, took_ms=_since(started))


@router.post("/delete", responses=WRITE_ERRORS, dependencies=admin)
def delete_items(request: DeleteItemsRequest, writer: WriterDep, service: ServiceDep,
                 bounds: BoundsDep) -> DeleteResponse:
    """Delete items by id (unknown ids skipped) or every item passing a filter."""
    started = time.perf_counter()
    if request.ids is not None:
        deleted = writer.delete(bounds.visible_ids(service.collection, request.ids), "ids")
    else:
        narrowed = bounds.narrowed(parse_filter(request.filter, "filter"))
        assert narrowed is not None
        deleted = writer.delete_matching(narrowed)
    return DeleteResponse(deleted=deleted, took_ms=_since(started))


def _image_entries(form: Any) -> list[ImageEntry]:
    files = form.getlist("file")
    if not files or not all(isinstance(file, UploadFile) for file in files):
        raise InvalidQuery("file", "give one or more image files, one `file` field each")
    columns = {name: form.getlist(name) for name in ("key", "caption", "metadata")}
    for name, values in columns.items():
        if values and len(values) != len(files):
            raise InvalidQuery(name, f"give one per file ({len(files)}) or none, got {len(values)}")
    entries = []
    for number, file in enumerate(files):
        metadata: Any = {}
        if columns["metadata"]:
            try:
                metadata = json.loads(columns["metadata"][number])
            except json.JSONDecodeError as error:
                raise InvalidQuery(f"metadata[{number}]", f"not valid JSON ({error})") from None
            if not isinstance(metadata, dict):
                raise InvalidQuery(f"metadata[{number}]", "must be a JSON object")
        key = columns["key"][number] if columns["key"] else None
        caption = columns["caption"][number] if columns["caption"] else None
        entries.append(ImageEntry(file.file.read(), key or None, caption or None, metadata))
    return entries


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)

"""Writes to a live collection: add or replace items by key, edit them, delete them.

Every write is checked whole before anything is embedded, embedded through the search service's
batchers in their background lane (after every waiting query, a few at a time), then committed
to the live log in one transaction (clipsearch.store.live): a write is all applied or not at all, and
acknowledged only once it is durable. Uploaded image, video and sound files are stored
content-addressed in `live-images/` beside the log before the commit that names them, so a committed
item's file is always there; a video is cut into segments as the build cut the collection's
(clipsearch.util.video), a sound into windows as the build cut its sounds, embedded by the audio
model the collection was built with (clipsearch.util.audio, clipsearch.search.sounds). In a collection
that indexes videos' sound tracks (its manifest's audio record says `video_sound`), a video's sound
track is a sound item under the video's key, written, edited and deleted with it.
In a collection built with `--ocr` (its manifest records the settings), an image's text is read
before its commit, as the build reads it (clipsearch.store.ocr_text), and an edit of its metadata
keeps what was read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.config import AudioSampling, OcrConfig, VideoSampling, WriteLimits
from clipsearch.errors import (
    AudioDecodeError,
    InvalidQuery,
    ItemNotFound,
    ModelLoadError,
    VideoDecodeError,
)
from clipsearch.index.fusion import FUSED_MODALITIES
from clipsearch.modality import Modality
from clipsearch.model.ocr import TextReader, reader_for
from clipsearch.search.query import check_text
from clipsearch.search.service import SearchService
from clipsearch.search.sounds import SoundQueries
from clipsearch.search.tracks import SoundTracks
from clipsearch.store.collection import Collection
from clipsearch.store.filters import Filter
from clipsearch.store.fused_texts import part_text
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_IMAGES, NewItem, with_text_vectors
from clipsearch.store.ocr_text import ocr_part, read_image_text, with_ocr
from clipsearch.store.segments import AUDIO_KEY, SOUND_OF_VIDEO, carried_over, is_sound_of_video, with_spans
from clipsearch.util.audio import AUDIO_MEDIA_TYPES, AudioClip, looks_like_audio, read_audio
from clipsearch.util.files import atomic_path
from clipsearch.util.media import MEDIA_HEAD_BYTES
from clipsearch.util.storage import storage_errors
from clipsearch.util.video import VideoSummary, looks_like_video, read_video

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {"mp4": ".mp4", "matroska": ".mkv", "avi": ".avi"}
"""An uploaded video's stored name's suffix, by its container family (clipsearch.util.video)."""
SOUND_SUFFIXES = {container: f".{container}" for container in AUDIO_MEDIA_TYPES}
"""An uploaded sound's stored name's suffix, by its format (clipsearch.util.audio): each is its own name."""

UNCHANGED: Any = object()
"""Marks a field an edit leaves as it is (None clears a caption)."""


@dataclass(frozen=True)
class TextEntry:
    text: str
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageEntry:
    data: bytes
    key: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class CollectionWriter:
    """Writes through one search service to its live log."""

    def __init__(self, service: SearchService, limits: WriteLimits | None = None,
                 video: VideoSampling | None = None, audio: AudioSampling | None = None) -> None:
        live = service.collection.live
        if live is None:
            raise ValueError("the service has no live log to write to")
        self.service, self.live, self.limits = service, live, limits or WriteLimits()
        # Cut as the collection's videos were when it was built; read within this server's bounds.
        self.video = (video or VideoSampling()).cutting_as(service.collection.bundle.manifest.video)
        self.audio = (audio or AudioSampling()).cutting_as(service.collection.bundle.manifest.audio)
        self.images = live.path.parent / LIVE_IMAGES
        self.tracks = SoundTracks(service.collection, live, self.audio)
        self._storing = threading.Lock()
        self._reader: TextReader | None = None
        self._reader_failure: ModelLoadError | None = None
        record = service.collection.bundle.manifest.ocr
        if record is not None:
            try:
                self._reader = reader_for(OcrConfig.from_record(record))
            except ModelLoadError as error:  # searches go on; image writes say why they cannot
                self._reader_failure = error
                log.warning("images written to this collection cannot have their text read: %s", error)

    def add_texts(self, entries: Sequence[TextEntry], field: str = "items") -> list[int]:
        """Add (or replace, by key) text items; their ids in order."""
        self._check_count(entries, field)
        for number, entry in enumerate(entries):
            check_text(entry.text, f"{field}[{number}].text", self.service.limits)
            self._check_entry(entry.key, entry.metadata, f"{field}[{number}]")
        self._check_unique_keys([entry.key for entry in entries], field)
        vectors = self.service.embed_texts([entry.text for entry in entries],
                                           [f"{field}[{number}].text" for number in range(len(entries))],
                                           background=True)
        keys = [entry.key or _new_key() for entry in entries]
        # A text has no file: its key is its uri, as a base text's uri is its key.
        return self._commit([NewItem(key, Modality.TEXT, key, entry.text, entry.metadata, _sha256(entry.text.encode()),
                                     vector) for key, entry, vector in zip(keys, entries, vectors, strict=True)])

    def add_images(self, entries: Sequence[ImageEntry], field: str = "files") -> list[int]:
        """Add (or replace, by key) image, video and sound items from uploaded files (told apart by their
        content: clipsearch.util.video, clipsearch.util.audio); their ids in order, all written or none."""
        self._check_count(entries, field)
        for number, entry in enumerate(entries):
            self._check_entry(entry.key, entry.metadata, f"{field}[{number}]")
            if entry.caption is not None:
                check_text(entry.caption, f"{field}[{number}].caption", self.service.limits)
        self._check_unique_keys([entry.key for entry in entries], field)
        # Each entry's key now: a video and its sound track are written under the same one.
        entries = [replace(entry, key=entry.key or _new_key()) for entry in entries]
        heads = [entry.data[:MEDIA_HEAD_BYTES] for entry in entries]
        is_video = [looks_like_video(head) for head in heads]
        is_sound = [looks_like_audio(head) and not video for head, video in zip(heads, is_video, strict=True)]
        timed = [video or sound for video, sound in zip(is_video, is_sound, strict=True)]
        if self._reader_failure is not None and not all(timed):
            raise ModelLoadError("this collection reads the text in its images (it was built with --ocr), and this "
                                 f"server cannot: {self._reader_failure.reason}; nothing was written", field)
        videos = {number: self._read_video(entry.data, f"{field}[{number}]")
                  for number, entry in enumerate(entries) if is_video[number]}
        sounds = {number: self._read_sound(entry.data, f"{field}[{number}]")
                  for number, entry in enumerate(entries) if is_sound[number]}
        tracks = {number: track for number in videos
                  if (track := self._read_sound_track(entries[number], f"{field}[{number}]")) is not None}
        pictures = [number for number in range(len(entries)) if not timed[number]]
        vectors: dict[int, np.ndarray] = dict(zip(pictures, self.service.embed_images(
            [entries[number].data for number in pictures], [f"{field}[{number}]" for number in pictures],
            background=True), strict=True))
        for number, video in videos.items():
            vectors[number] = self.service.embedder.frames([segment.frame for segment in video.segments],
                                                           background=True)
        for number, sound in sounds.items():
            vectors[number] = self._embed_windows(sound)
        items = [self._sound_item(entry, sounds[number], vectors[number]) if number in sounds else
                 self._new_item(entry, videos.get(number), vectors[number]) for number, entry in enumerate(entries)]
        if self.service.fusion is not None:
            items = with_text_vectors(items, self.service.fusion.text_parts, self._embed_item_texts)
        # A video's sound track is an item of its own, its file the video's; one the video had, and no longer
        # has, goes with this write.
        tracks_written = [self._sound_item(entries[number], track, self._embed_windows(track), items[number])
                          for number, track in tracks.items()]
        tracks_gone = [sound_id for number in videos if number not in tracks
                       and (sound_id := self.tracks.id_of(str(entries[number].key))) is not None]
        stored: list[Path] = []
        # From storing the files to the commit, one image write at a time in this process: a write
        # that fails removes the files it stored, which another's upload of the same bytes must not
        # find in the meantime and then lose.
        with self._storing:
            try:
                for item, entry in zip(items, entries, strict=True):
                    if self._store_image(Path(item.uri), entry.data):
                        stored.append(Path(item.uri))
                return self._commit(items + tracks_written, tracks_gone)[:len(items)]
            except BaseException:
                self._remove_unused(stored)
                raise

    def _read_video(self, data: bytes, field: str) -> VideoSummary:
        try:
            return read_video(data, self.video)
        except VideoDecodeError as error:
            raise type(error)(error.reason, field) from None

    def _read_sound(self, data: bytes, field: str) -> AudioClip:
        """A sound upload read at the audio model's rate, within this server's bounds; refused naming
        `field` in a collection without an audio model (built without sounds)."""
        sounds = self._sounds(field)
        try:
            return read_audio(data, sounds.encoder.sampling_rate, self.audio)
        except AudioDecodeError as error:
            raise type(error)(error.reason, field) from None

    def _sounds(self, field: str = "file") -> SoundQueries:
        sounds = self.service.sounds
        if sounds is None:
            if self.service.bundle.manifest.audio is not None:
                raise ModelLoadError(f"this collection's sounds cannot be embedded: {self.service.audio_problem}; "
                                     "nothing was written", field)
            raise InvalidQuery(field, "this collection was built without sounds, so it has no audio model to embed "
                                      "one: build it with --audio to hold sounds")
        return sounds

    def _read_sound_track(self, entry: ImageEntry, field: str) -> AudioClip | None:
        """The sound track of an uploaded video, in a collection that indexes them (SoundTracks.read)."""
        if not self.tracks.indexed:
            return None
        return self.tracks.read(entry.data, str(entry.key), self._sounds(field).encoder.sampling_rate, field)

    def _windows(self, sound: AudioClip) -> list[tuple[float, float]]:
        return sound.windows(self._sounds().encoder.window_s, self.audio.hop_s)

    def _embed_windows(self, sound: AudioClip) -> np.ndarray:
        return self._sounds().windows([sound.excerpt(start, end) for start, end in self._windows(sound)],
                                      background=True)

    def _sound_item(self, entry: ImageEntry, sound: AudioClip, vectors: np.ndarray,
                    video: NewItem | None = None) -> NewItem:
        """An uploaded sound's item: its file stored under its content hash, its windows' spans in its
        metadata. With `video`, the sound track of that video's item: its file, hash and key."""
        if video is None:
            digest = _sha256(entry.data)
            path = str((self.images / f"{digest}{SOUND_SUFFIXES[sound.container]}").resolve())
        else:  # the upload was hashed once, for its video
            digest, path = video.content_hash, video.uri
        record = sound.record() | ({SOUND_OF_VIDEO: True} if video is not None else {})
        extra = with_spans(entry.metadata, record, self._windows(sound), AUDIO_KEY)
        return NewItem(entry.key or _new_key(), Modality.AUDIO, path, entry.caption, extra, digest, vectors)

    def _new_item(self, entry: ImageEntry, video: VideoSummary | None, vector: np.ndarray) -> NewItem:
        """An uploaded image's or video's item: its file stored under its content hash (an image's
        text read first, in a collection built with --ocr; a video's segments' spans in its metadata)."""
        digest = _sha256(entry.data)
        if video is not None:
            path = (self.images / f"{digest}{VIDEO_SUFFIXES[video.container]}").resolve()
            extra = with_spans(entry.metadata, video.record(),
                               [(segment.start_s, segment.end_s) for segment in video.segments])
            return NewItem(entry.key or _new_key(), Modality.VIDEO, str(path), entry.caption, extra, digest, vector)
        extra = entry.metadata if self._reader is None else \
            with_ocr(entry.metadata, read_image_text(self._reader, entry.data))
        return NewItem(entry.key or _new_key(), Modality.IMAGE, str(self._upload_path(entry.data, digest)),
                       entry.caption, extra, digest, vector)

    def update(self, item_id: int, *, caption: str | None = UNCHANGED, text: str = UNCHANGED,
               metadata: dict[str, Any] = UNCHANGED) -> Item:
        """Edit an item's caption (images), text (texts: embedded again) or metadata (replaced whole); a
        video's sound track, when it has one indexed, takes the same caption and metadata."""
        item = self.service.collection.item(item_id, "item_id")
        if item.modality is Modality.AUDIO and is_sound_of_video(item.extra):
            raise InvalidQuery("item_id", f"item {item_id} is the sound track of a video (uri {item.uri}): edit the "
                                          "video, and its sound track follows")
        if caption is not UNCHANGED and item.modality is Modality.TEXT:
            raise InvalidQuery("caption", f"item {item_id} is a text; give `text` instead")
        if text is not UNCHANGED and item.modality is not Modality.TEXT:
            article = "an" if item.modality in (Modality.IMAGE, Modality.AUDIO) else "a"
            raise InvalidQuery("text", f"item {item_id} is {article} {item.modality.value}; give `caption` instead")
        if caption is not UNCHANGED and caption is not None:
            check_text(caption, "caption", self.service.limits)
        read = ocr_part(item.extra)
        new_metadata = item.extra if metadata is UNCHANGED else with_ocr(metadata, read) if read else metadata
        if item.modality.timed:
            new_metadata = carried_over(new_metadata, item.extra)
        self._check_entry(None, new_metadata, "")
        # A video (or a sound) keeps every segment's vector, not the one that stands for it in a query.
        vector = self.service.collection.segment_vectors(item_id)[1] if item.modality.timed else \
            self.service.collection.stored_vector(item_id)
        new_text = item.text
        if text is not UNCHANGED:
            check_text(text, "text", self.service.limits)
            vector = self.service.embed_texts([text], ["text"], background=True)[0]
            new_text = text
        elif caption is not UNCHANGED:
            new_text = caption
        key = self.live.key_of(item_id)
        if key is None:
            raise ItemNotFound(item_id, "item_id")
        hash_of = item.content_hash if text is UNCHANGED else _sha256(text.encode())
        edited = NewItem(key, item.modality, item.uri, new_text, new_metadata, hash_of, vector)
        fusion = self.service.fusion
        if fusion is not None and item.modality in FUSED_MODALITIES:
            # The vector of a text that did not change stays; only a changed one is embedded again.
            unchanged = {part: vector for part, vector in self.service.collection.text_vectors(item_id).items()
                         if part_text(part, item.text, item.extra) == part_text(part, new_text, new_metadata)}
            [edited] = with_text_vectors([replace(edited, text_vectors=unchanged)], fusion.text_parts,
                                         self._embed_item_texts)
        track = self.tracks.id_of(key) if item.modality is Modality.VIDEO else None
        self._commit([edited] if track is None else [edited, self.tracks.edited(track, new_text, new_metadata)])
        return self.service.collection.item(item_id, "item_id")

    def delete(self, item_ids: Sequence[int], field: str = "ids") -> list[int]:
        """Delete items by id, and the sound tracks of videos among them; the ids that were there (unknown
        ids are not an error: deleting is idempotent)."""
        self._check_count(item_ids, field)
        deleted = self.live.delete([*item_ids, *self.tracks.of_videos(item_ids)])
        self.service.collection.refresh()
        return deleted

    def delete_matching(self, filter: Filter) -> list[int]:
        """Delete every item, of every modality, that passes `filter`, and the sound tracks of the videos
        among them; the ids deleted."""
        doomed = ids_matching(self.service.collection, filter)
        deleted = self.live.delete([*doomed, *self.tracks.of_videos(doomed)]) if doomed else []
        self.service.collection.refresh()
        return deleted

    def _embed_item_texts(self, texts: list[str]) -> list[np.ndarray]:
        """An image's texts (caption, read text) or a video's caption, embedded for a fused bundle, behind
        every query."""
        return self.service.embed_texts(texts, ["caption"] * len(texts), background=True)

    def _commit(self, items: list[NewItem], deletes: Sequence[int] = ()) -> list[int]:
        """Write `items` and delete `deletes` in one transaction; the items' ids, in order."""
        ids = self.live.apply(items, deletes, {}) if deletes else self.live.write(items)
        self.service.collection.refresh()  # visible at once on this worker
        return ids

    def _upload_path(self, data: bytes, digest: str) -> Path:
        """Where an upload is stored: named by its content, with its format's suffix."""
        with Image.open(io.BytesIO(data)) as image:  # the upload decoded already: this only names its format
            suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}.get(
                image.format or "", ".bin")
        return (self.images / f"{digest}{suffix}").resolve()

    def _store_image(self, path: Path, data: bytes) -> bool:
        """Store an upload at `path`, durably; whether this call wrote it (False: it was there)."""
        if path.exists():
            return False
        with storage_errors(self.images, "storing an uploaded image"):
            self.images.mkdir(exist_ok=True)
            with atomic_path(path) as temporary:
                temporary.write_bytes(data)
        return True

    def _remove_unused(self, stored: list[Path]) -> None:
        """Remove the files a write that failed had stored, unless an item committed meanwhile names one
        (the same bytes uploaded by another request): a refused write leaves no file behind."""
        for path in stored:
            if self.live.id_of_uri(str(path)) is None:
                path.unlink(missing_ok=True)

    def _check_count(self, entries: Sequence[object], field: str) -> None:
        if not entries:
            raise InvalidQuery(field, "give at least one item")
        if len(entries) > self.limits.max_items:
            raise InvalidQuery(field, f"at most {self.limits.max_items} items per request, got {len(entries)}")

    def _check_entry(self, key: str | None, metadata: dict[str, Any], field: str) -> None:
        prefix = f"{field}." if field else ""
        if key is not None:
            if not key.strip():
                raise InvalidQuery(f"{prefix}key", "must not be empty or only whitespace")
            if len(key) > self.limits.max_key_chars:
                raise InvalidQuery(f"{prefix}key", f"at most {self.limits.max_key_chars} characters, got {len(key)}")
            if "\x00" in key:
                raise InvalidQuery(f"{prefix}key", "must not contain NUL characters")
        if not isinstance(metadata, dict):
            raise InvalidQuery(f"{prefix}metadata", "must be a JSON object")
        size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
        if size > self.limits.max_metadata_bytes:
            raise InvalidQuery(f"{prefix}metadata", f"at most {self.limits.max_metadata_bytes} bytes as JSON, "
                                                    f"got {size}")

    @staticmethod
    def _check_unique_keys(keys: Sequence[str | None], field: str) -> None:
        seen: dict[str, int] = {}
        for number, key in enumerate(keys):
            if key is None:
                continue
            if key in seen:
                raise InvalidQuery(f"{field}[{number}].key", f"repeats {field}[{seen[key]}].key in the same request")
            seen[key] = number


def ids_matching(collection: Collection, filter: Filter) -> list[int]:
    """Every item of the collection now, of both modalities, that passes `filter`."""
    found: list[int] = []
    state = collection.refresh()
    for modality in Modality:
        found.extend(int(item_id) for item_id in state.matching_ids(modality, filter))
        base = collection.bundle.items.matching_ids(modality, filter.sql, filter.params)
        found.extend(int(item_id) for item_id in np.setdiff1d(base, state.removed_of(modality)))
    return found


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _new_key() -> str:
    return f"live:{uuid.uuid4().hex}"

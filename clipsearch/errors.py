"""Domain errors of the core. The server maps them to HTTP in exactly one place (app/errors.py).

Every error carries a short user-facing `reason` and, where one input is at fault, the `field`
that holds it. The HTTP status each class is answered with (looked up through the class
hierarchy, so a subclass inherits its parent's status unless it has its own):

    ClipSearchError                 500  base class; never raised bare
    ├── BundleError                 503  a bundle cannot be served or written as asked
    │   ├── BundleFileMissing       503
    │   ├── ChecksumMismatch        503
    │   ├── UnsupportedFormatVersion 503
    │   ├── ManifestInvalid         503
    │   ├── ModelMismatch           503
    │   ├── CheckpointRequired      503
    │   ├── BundleReplaced          503
    │   ├── LiveChangesPending      503
    │   ├── CannotCompact           503
    │   ├── CannotReindex           503  indexer only: a bundle cannot be reindexed (or rolled back) as asked
    │   └── SnapshotInvalid         503  a snapshot archive is damaged, or cannot be restored where asked
    ├── BuildError                   —   indexer only: the build cannot start or go on
    │   ├── NoSources                —
    │   ├── IndexSettingsInvalid     —
    │   └── ResumeMismatch           —
    ├── SourceError                  —   indexer only: a corpus cannot be read at all
    ├── FinetuneError                —   indexer only: the model or settings cannot be fine-tuned as asked
    ├── KeyFileError                 —   indexer and start-up only: a key or the keys file is refused
    ├── ModelLoadError              503
    ├── ImageDecodeError            422  bytes that should be an image are not a usable one
    │   └── ImageTooLarge           413
    ├── VideoDecodeError            422  bytes that should be a video are not a usable one (or need the [video] extra)
    │   └── VideoTooLarge           413  past a bound of clipsearch.config.VideoSampling: pixels, length, decoding time
    ├── AudioDecodeError            422  bytes that should be a sound are not a usable one (or need the [audio] extra)
    │   ├── AudioTooLarge           413  past a bound of clipsearch.config.AudioSampling: length, decoding time
    │   └── NoSoundTrack            422  a video holds no sound: not a fault when its sound track is asked for
    ├── InvalidQuery                422  a query field has a value the search cannot use
    │   ├── QueryImageTooLarge      413
    │   └── ModalityUnavailable     422
    ├── ItemNotFound                404
    ├── CollectionNotFound          404  no collection has the name a request gives
    ├── CollectionConflict          409  a collection cannot be made or dropped as asked
    ├── CollectionOverBudget        503  loading a collection would pass the memory budget
    ├── OutsideKeyFilter            403  a write would put an item outside its key's filter
    ├── ServiceBusy                 503  (with Retry-After)
    └── StorageError                503  the filesystem refused a write (clipsearch.util.storage)
        ├── StorageFull             507  no space left (ENOSPC, EDQUOT, SQLite's SQLITE_FULL)
        ├── StorageUnwritable       503  read-only or not permitted (EROFS, EACCES, EPERM, SQLITE_READONLY)
        └── StorageLocked           503  (with Retry-After) another process held the lock past the timeout

The server adds ServiceNotReady (503) beside these, and its key gate answers 401, 403 and 429
itself (app/access.py).
Messages speak of the core's own terms; the entry points add CLI flags or HTTP field names.
"""

from __future__ import annotations


class ClipSearchError(Exception):
    """Base class of every error the core raises on purpose."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


class BundleError(ClipSearchError):
    """A bundle cannot be served or written as asked; the message says which file and why."""


class BundleFileMissing(BundleError):
    """A file the manifest lists (or the manifest itself) is not in the bundle directory."""


class ChecksumMismatch(BundleError):
    """A bundle file's content no longer matches the checksum recorded in the manifest."""


class UnsupportedFormatVersion(BundleError):
    """The bundle was written in a format version this code cannot read."""


class ManifestInvalid(BundleError):
    """manifest.json is not valid JSON or lacks a required field."""


class ModelMismatch(BundleError):
    """The model loaded does not match the one the bundle was built with."""


class CheckpointRequired(BundleError):
    """The bundle was built from a local checkpoint file and none was given to load."""


class BundleReplaced(BundleError):
    """The bundle was rebuilt after the server loaded it; writes are refused until it restarts."""


class LiveChangesPending(BundleError):
    """Replacing the bundle would drop live changes that were written to it."""


class CannotCompact(BundleError):
    """The bundle's live changes cannot be folded into its base (its index stores compressed vectors)."""


class CannotReindex(BundleError):
    """A bundle cannot be reindexed with another model, or rolled back, as asked; the reason says why."""


class SnapshotInvalid(BundleError):
    """A snapshot archive is not one, is damaged (a file missing or not matching its checksum), or
    cannot be restored where asked (clipsearch.store.bundle.snapshot)."""


class BuildError(ClipSearchError):
    """A build cannot start or go on as configured."""


class NoSources(BuildError):
    """A build was given neither images nor texts."""


class IndexSettingsInvalid(BuildError):
    """The index factory string is not valid for FAISS, or does not fit the corpus."""


class ResumeMismatch(BuildError):
    """An unfinished build exists at the output path, made with different arguments."""


class SourceError(ClipSearchError):
    """A corpus cannot be read at all (missing path, unknown format, missing column)."""


class FinetuneError(ClipSearchError):
    """The model or the settings cannot be fine-tuned as asked."""


class KeyFileError(ClipSearchError):
    """A key could not be made or changed (a bad name, scope or rate; no such key), or the keys file
    could not be read."""


class ModelLoadError(ClipSearchError):
    """The model, its pretrained weights or a checkpoint file could not be loaded."""


class ImageDecodeError(ClipSearchError):
    """Bytes that should be an image cannot be decoded or prepared for the model."""


class ImageTooLarge(ImageDecodeError):
    """The image declares more pixels than the configured limit (decompression-bomb guard)."""


class VideoDecodeError(ClipSearchError):
    """Bytes that should be a video cannot be decoded, hold no frame, or the [video] extra is missing."""


class VideoTooLarge(VideoDecodeError):
    """The video passes a bound on its frame size, its length or the time it takes to decode."""


class AudioDecodeError(ClipSearchError):
    """Bytes that should be a sound file cannot be decoded, hold no sound, or the [audio] extra is missing."""


class AudioTooLarge(AudioDecodeError):
    """The recording passes a bound on its length or the time it takes to decode."""


class NoSoundTrack(AudioDecodeError):
    """The file holds no audio stream: a silent video, whose sound track there is nothing to index of
    (clipsearch.util.audio.read_audio with `of_video`)."""


class InvalidQuery(ClipSearchError):
    """A query field has a value the search cannot use; `field` names it, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field)


class QueryImageTooLarge(InvalidQuery):
    """A query image has more pixels than the server accepts."""


class ModalityUnavailable(InvalidQuery):
    """The query targets a modality the bundle has no items of."""


class ItemNotFound(ClipSearchError):
    """No item in the bundle has the requested id (or its file is gone); `field` names where the id was given."""

    def __init__(self, item_id: int, field: str = "id", reason: str = "no such item in the bundle") -> None:
        super().__init__(f"item {item_id}: {reason}", field)
        self.item_id = item_id


class CollectionNotFound(ClipSearchError):
    """No collection the server serves has the name a request gives."""


class CollectionConflict(ClipSearchError):
    """A collection cannot be made or dropped as asked: the name is taken, it is the default, or the
    server serves one bundle rather than a folder of collections."""


class CollectionOverBudget(ClipSearchError):
    """Loading a collection would take the server past its memory budget; the reason gives the figures."""


class OutsideKeyFilter(ClipSearchError):
    """A key bound to a filter tried to write an item that would not pass it (clipsearch.search.bounds)."""


class ServiceBusy(ClipSearchError):
    """The model did not finish a query within the time limit (queued behind others, or too slow)."""


class StorageError(ClipSearchError):
    """The filesystem under a bundle refused a write; nothing of that write was kept.

    `path` is the file or directory being written, `free_bytes` the space left on its filesystem
    when the error was met (None where it could not be read)."""

    def __init__(self, reason: str, path: str, free_bytes: int | None = None) -> None:
        super().__init__(reason)
        self.path, self.free_bytes = path, free_bytes


class StorageFull(StorageError):
    """The filesystem (or the user's quota on it) has no room left for the write."""


class StorageUnwritable(StorageError):
    """The filesystem is read-only, or this process may not write there."""


class StorageLocked(StorageError):
    """Another process held the bundle's write lock for longer than the lock timeout."""

"""Domain errors of the core. The server maps them to HTTP in exactly one place (app/errors.py)."""

from __future__ import annotations


class ClipSearchError(Exception):
    """Base class of every error the core raises on purpose."""


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


class ResumeMismatch(ClipSearchError):
    """An unfinished build exists at the output path, made with different arguments."""


class ModelLoadError(ClipSearchError):
    """The model, its pretrained weights or a checkpoint file could not be loaded."""


class ImageDecodeError(ClipSearchError):
    """Bytes that should be an image cannot be decoded; `reason` is short and user-facing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageTooLarge(ImageDecodeError):
    """The image declares more pixels than the configured limit (decompression-bomb guard)."""


class InvalidQuery(ClipSearchError):
    """A query field has a value the search cannot use; `field` names it, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class QueryImageTooLarge(InvalidQuery):
    """A query image has more pixels than the server accepts."""


class ModalityUnavailable(InvalidQuery):
    """The query targets a modality the bundle has no items of."""


class ServiceBusy(ClipSearchError):
    """The model did not finish a query within the time limit (queued behind others, or too slow)."""


class ItemNotFound(ClipSearchError):
    """No item in the bundle has the requested id."""

    def __init__(self, item_id: int, reason: str = "no such item in the bundle") -> None:
        super().__init__(f"item {item_id}: {reason}")
        self.item_id = item_id


class SourceError(ClipSearchError):
    """A corpus cannot be read at all (missing path, unknown format, missing column)."""

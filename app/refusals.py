"""Why writes are refused now, as /info (`writes`) and the metrics (`clipsearch_writes_refused`)
report it: a state of the bundle (not loaded, unwritable at start, replaced by one that cannot be
served), or the filesystem's refusal of the last write (clipsearch.errors.StorageError), until one
goes through again."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from clipsearch.errors import StorageError, StorageFull, StorageLocked, StorageUnwritable
from clipsearch.util.storage import DiskSpace

STORAGE_REFUSALS: dict[type[StorageError], str] = {
    StorageFull: "disk_full", StorageUnwritable: "unwritable", StorageLocked: "locked"}
"""How each refusal of the filesystem is named."""
REFUSAL_KINDS = (*STORAGE_REFUSALS.values(), "bundle_replaced", "not_loaded")
"""Every name a refusal may have."""


@dataclass(frozen=True)
class WriteRefusal:
    """Why writes are refused now: `kind` is one of STORAGE_REFUSALS' names (the last write met
    that), or "unwritable" (the live log could not be opened), "bundle_replaced" or "not_loaded"."""

    kind: str
    reason: str
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    count: int = 1
    """Writes refused for this reason since `since` (1 for a state of the bundle)."""

    @property
    def by_the_filesystem(self) -> bool:
        """The last write met it (so the next one that goes through ends it)."""
        return self.kind in STORAGE_REFUSALS.values()


def refusal_after(previous: WriteRefusal | None, error: StorageError) -> WriteRefusal:
    """The refusal once a write met `error`: one more of the same kind, or a new one."""
    kind = next(STORAGE_REFUSALS[cls] for cls in type(error).__mro__ if cls in STORAGE_REFUSALS)
    if previous is not None and previous.kind == kind:
        return replace(previous, reason=error.reason, count=previous.count + 1)
    return WriteRefusal(kind, error.reason)


@dataclass(frozen=True)
class WritesStatus:
    enabled: bool
    """An admin key is set: writes are allowed at all."""
    refusal: WriteRefusal | None
    space: DiskSpace | None

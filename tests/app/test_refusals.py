"""A run of refused writes is counted as one refusal while its kind stays the same, and a new kind starts anew."""

from __future__ import annotations

from app.refusals import REFUSAL_KINDS, WriteRefusal, refusal_after
from clipsearch.errors import StorageFull, StorageLocked


def test_refusals_of_one_kind_are_counted_since_the_first_with_the_latest_reason() -> None:
    first = refusal_after(None, StorageFull("no space (1)", "/b"))
    second = refusal_after(first, StorageFull("no space (2)", "/b"))
    assert (second.kind, second.reason, second.count, second.since) == ("disk_full", "no space (2)", 2, first.since)
    assert second.by_the_filesystem


def test_another_kind_of_refusal_starts_its_own_count() -> None:
    locked = refusal_after(refusal_after(None, StorageFull("full", "/b")), StorageLocked("held", "/b"))
    assert (locked.kind, locked.count) == ("locked", 1)


def test_a_state_of_the_bundle_is_not_the_filesystems_refusal_of_a_write() -> None:
    assert not WriteRefusal("not_loaded", "loading").by_the_filesystem
    assert set(REFUSAL_KINDS) == {"disk_full", "unwritable", "locked", "bundle_replaced", "not_loaded"}

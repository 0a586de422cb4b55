"""Swapping a finished bundle into place, and the debris of killed writers."""

from __future__ import annotations

from pathlib import Path

from clipsearch.store.bundle import Bundle, write_bundle
from clipsearch.store.bundle.swap import remove_retired, swap_into_place


def test_debris_of_killed_builds_is_removed_but_live_builds_are_left_alone(bundle: Bundle, tmp_path: Path) -> None:
    import os

    dead = tmp_path / ".out.staging-999999999"
    live = tmp_path / f".out.staging-{os.getppid()}"
    retired = tmp_path / ".out.retired-999999998"
    for folder in (dead, live, retired):
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
    write_bundle(tmp_path / "out", bundle.manifest.model, 32, {}, [], {"skipped": []}, {})
    assert not dead.exists() and not retired.exists() and live.exists()


def test_a_finished_bundle_is_exchanged_with_the_old_one_which_is_left_for_removal(tmp_path: Path) -> None:
    out, staging = tmp_path / "bundle", tmp_path / "staging"
    for folder, marker in ((out, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "marker").write_text(marker)
    old = swap_into_place(staging, out)
    assert (out / "marker").read_text() == "new"
    assert old is not None and (old / "marker").read_text() == "old"
    remove_retired(old)
    assert not old.exists()
    fresh = tmp_path / "fresh"
    (tmp_path / "staging2").mkdir()
    assert swap_into_place(tmp_path / "staging2", fresh) is None and fresh.is_dir()

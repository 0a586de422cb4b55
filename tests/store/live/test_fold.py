"""Folding a live log into a compaction's new base: keys kept, and the writes made meanwhile carried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import BundleReplaced
from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem, fold_since, start_fold
from tests.support.corpora import private_copy


def text(key: str, words: str, dim: int) -> NewItem:
    return NewItem(key, Modality.TEXT, key, words, {}, f"hash of {words}", np.ones(dim, np.float32) / np.sqrt(dim))


def test_a_fold_keeps_every_key_and_carries_the_writes_made_since(bundle: Bundle, bundle_path: Path,
                                                                  tmp_path: Path) -> None:
    path, dim = private_copy(bundle_path, tmp_path), bundle.manifest.embedding_dim
    log = LiveLog(path / LIVE_FILE, bundle.items, dim)
    [added] = log.write([text("new", "a new text", dim)])
    snapshot = log.state()
    texts = bundle.items.matching_ids(Modality.TEXT)
    new_base = {Modality.TEXT: np.sort(np.append(texts, added)),
                Modality.IMAGE: bundle.items.matching_ids(Modality.IMAGE)}
    into = tmp_path / "new-live.sqlite"
    start_fold(log, new_base, into)
    replaced_key = log.key_of(int(texts[0]))
    assert replaced_key is not None
    log.write([text(replaced_key, "written while compacting", dim)])
    carried = fold_since(log, snapshot.generation, snapshot, new_base, into)
    assert (carried.items, carried.hidden, carried.generation) == (1, 1, log.generation())
    folded = LiveLog(into, bundle.items, dim)
    try:
        assert folded.id_of(Modality.TEXT, "new") == added  # folded into the base, key kept
        assert folded.id_of(Modality.TEXT, replaced_key) == int(texts[0])
        state = folded.state()
        assert state.items[int(texts[0])].text == "written while compacting" and state.is_removed(int(texts[0]))
        [next_one] = folded.write([text("later", "after the swap", dim)])
        assert next_one > added  # ids go on where they were
    finally:
        folded.close()
        log.close()


def test_folding_a_log_whose_bundle_was_replaced_is_refused(bundle: Bundle, bundle_path: Path,
                                                            tmp_path: Path) -> None:
    path, dim = private_copy(bundle_path, tmp_path), bundle.manifest.embedding_dim
    log = LiveLog(path / LIVE_FILE, bundle.items, dim)
    snapshot = log.state()
    start_fold(log, {}, tmp_path / "new.sqlite")
    replacement = LiveLog(tmp_path / "other.sqlite", bundle.items, dim)
    replacement.close()
    (tmp_path / "other.sqlite").replace(path / LIVE_FILE)
    with pytest.raises(BundleReplaced, match="replaced while it was being compacted"):
        fold_since(log, snapshot.generation, snapshot, {}, tmp_path / "new.sqlite")
    log.close()

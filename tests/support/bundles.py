"""Small synthetic bundles (no model: random unit vectors) and the plain reference of what a bundle
with its live log should serve, for the tests of the live log and compaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsearch.config import ModelRef
from clipsearch.index import faiss_index
from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle, ModalityContent, load_bundle, write_bundle
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem

DIM = 16
MODEL = ModelRef("synthetic")


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_bundle(path: Path, count: int, factory: str = "Flat", texts: int = 0) -> Path:
    """`count` image items (ids 0…count-1, uri img/N) and `texts` text items after them."""
    content, items = {}, []
    for modality, first, size in ((Modality.IMAGE, 0, count), (Modality.TEXT, count, texts)):
        if not size:
            continue
        ids = np.arange(first, first + size, dtype=np.int64)
        queries = unit_rows(200, 99)
        index, spec = faiss_index.build_index(unit_rows(size, first), ids, factory if modality is Modality.IMAGE
                                              else "Flat", queries, "synthetic")
        content[modality] = ModalityContent(index, spec)
        prefix = "img" if modality is Modality.IMAGE else "txt"
        items += [Item(int(item_id), modality, f"{prefix}/{item_id}", None, {"n": int(item_id)},
                       f"hash{item_id}") for item_id in ids]
    write_bundle(path, MODEL, DIM, content, items, {"skipped": []}, {})
    return path


def new_item(key: str, seed: int, modality: Modality = Modality.IMAGE, uri: str | None = None) -> NewItem:
    return NewItem(key, modality, uri or key, None, {"key": key}, f"hash-{key}", unit_rows(1, seed)[0])


class ReferenceCollection:
    """The plain reference: id → (uri, extra, vector) of every item that should be there."""

    def __init__(self, bundle: Bundle) -> None:
        self.items: dict[int, tuple[Modality, str, dict[str, object], np.ndarray]] = {}
        for item in bundle.items:
            vector = faiss_index.reconstruct(bundle.indices[item.modality], item.id)
            assert vector is not None
            self.items[item.id] = (item.modality, item.uri, item.extra, vector)

    def write(self, log: LiveLog, items: list[NewItem]) -> list[int]:
        ids = log.write(items)
        for item_id, item in zip(ids, items, strict=True):
            self.items[item_id] = (item.modality, item.uri, item.extra, item.vector)
        return ids

    def delete(self, log: LiveLog, ids: list[int]) -> None:
        assert log.delete(ids) == ids
        for item_id in ids:
            del self.items[item_id]

    def assert_served_by(self, path: Path) -> None:
        """The bundle at `path` with its log holds exactly these items, and searches as brute force does."""
        bundle = load_bundle(path)
        log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
        try:
            state = log.state()
            for modality in Modality:
                expected = {item_id: entry for item_id, entry in self.items.items() if entry[0] is modality}
                base = bundle.indices.get(modality)
                base_ids = faiss_index.ids_of(base) if base is not None else np.zeros(0, np.int64)
                visible = set(np.setdiff1d(base_ids, state.removed_of(modality)).tolist()) | \
                    set(state.segment(modality).ids.tolist())
                assert visible == set(expected)
                for item_id, (_, uri, extra, vector) in expected.items():
                    item = state.items.get(item_id) or bundle.items.get(item_id)
                    assert item is not None and (item.uri, item.extra) == (uri, extra)
                    stored = state.segment(modality).vector(item_id)
                    if stored is None:
                        stored = faiss_index.reconstruct(bundle.indices[modality], item_id)
                    np.testing.assert_array_equal(stored, vector)
        finally:
            log.close()
            bundle.close()

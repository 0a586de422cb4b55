"""What one search may return: the base items its filter allows (prepared for the base's searcher,
cached per filter) and the live items, all from one snapshot of the live log.

Also the fused searchers of a fused bundle's image and video items (clipsearch.index.fusion), which
must hold their rows as the image (video) searcher holds the images (segments), so that the items a
filter allows serve both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clipsearch.errors import BundleError, InvalidQuery
from clipsearch.index.fusion import FUSED_MODALITIES, Fusion
from clipsearch.index.searchers import Allowed, ExactSearcher, Searcher, searcher_for
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.search.query import ResultOptions
from clipsearch.store import segments
from clipsearch.store.collection import Collection
from clipsearch.store.filters import Filter
from clipsearch.store.live import LiveState


@dataclass(frozen=True)
class Scope:
    """What one search may return, all from one live snapshot (`state`): base items (every one
    when `base` is None) and live items with their vectors; `matched` counts both."""

    state: LiveState
    base: Allowed | None
    searches_base: bool
    live_ids: np.ndarray
    live_vectors: np.ndarray
    matched: int
    fusion: Fusion | None = None
    """Image (video) items are scored by image (segment) and texts with these weights (laid out as the
    bundle's); `live_vectors` are fused rows."""


class Scoper:
    """Makes the scope of each search; thread-safe."""

    def __init__(self, collection: Collection, searchers: Mapping[Modality, Searcher], cache_size: int) -> None:
        self.collection, self.searchers, self.cache_size = collection, searchers, cache_size
        # The base items each recent filter allows, per target. Entries are keyed by the number of
        # hidden base ids too (it only grows), so a delete makes a new entry, never a stale one.
        self._allowed: OrderedDict[tuple[Modality, str, int], tuple[Allowed, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, target: Modality, filter: Filter | None, fusion: Fusion | None = None) -> Scope:
        """What a search of `target` may return under `filter`, from the live log's latest snapshot;
        with `fusion`, live image (video) items as fused rows."""
        state = self.collection.refresh()
        removed = state.removed_of(target)
        base_count = self.collection.base_count(target) - len(removed)
        base = None
        if base_count > 0 and (filter is not None or len(removed)):
            base, base_count = self._base_allowed(target, filter, removed)
        segment = state.segment(target)
        live_ids = segment.ids
        live_vectors = segment.fused_rows(fusion.text_parts) if fusion is not None else segment.vectors
        if filter is not None and len(live_ids):
            live_ids = state.matching_ids(target, filter)
            if target.timed:  # the items that pass, as their segments
                live_ids = segments.of_items(live_ids, segment.ids)
            live_vectors = live_vectors[np.searchsorted(segment.ids, live_ids)]
        live_count = segments.count_items(live_ids) if target.timed else len(live_ids)
        return Scope(state, base, base_count > 0, live_ids, live_vectors, base_count + live_count, fusion)

    def fusion_for(self, target: Modality, options: ResultOptions) -> Fusion | None:
        """The weights a search of `target` fuses an image (a video) with its texts by: the query's (laid
        out as the bundle's), else the bundle's; None for other targets, for videos over an
        approximate index, and for bundles not fused."""
        stored, fused = self.collection.bundle.fusion, self.collection.bundle.fused_modalities
        if options.fusion is not None:
            if target not in FUSED_MODALITIES:
                raise InvalidQuery("fusion", "images and videos are fused with their texts in image and video "
                                             f"results only; the target is {target.value}")
            if stored is None:
                raise InvalidQuery("fusion", "this bundle stores no caption or read-text vectors; build it with "
                                             "--fuse to weigh images and videos with their texts")
            if target not in fused:
                raise InvalidQuery("fusion", f"this bundle's {target.value} index is approximate, and {target.value}s "
                                             "are fused with their captions over an exact index only; build it "
                                             "with a Flat --index-factory to weigh them")
            return options.fusion.laid_out_as(stored)
        return stored if target in fused else None

    def _base_allowed(self, target: Modality, filter: Filter | None, removed: np.ndarray) -> tuple[Allowed, int]:
        """The base items of `target` that pass `filter` and are not hidden, prepared for the base's
        searcher (a video's as its segments), and how many items they are; cached. Hidden ids only
        ever grow in number, so their count versions the entry."""
        key = (target, "" if filter is None else filter.canonical, len(removed))
        with self._lock:
            if key in self._allowed:
                self._allowed.move_to_end(key)
                return self._allowed[key]
        searcher, bundle = self.searchers[target], self.collection.bundle
        held = bundle.base_ids(target)
        if filter is None:
            hidden = segments.of_items(removed, held) if target.timed else removed
            allowed = searcher.allow_all_but(hidden, held)
            made = (allowed, self.collection.base_count(target) - len(removed) if target.timed
                     else len(allowed))
        else:
            ids = bundle.items.matching_ids(target, filter.sql, filter.params)
            ids = np.setdiff1d(ids, removed, assume_unique=True) if len(removed) else ids
            allowed = searcher.allow(segments.of_items(ids, held) if target.timed else ids)
            made = (allowed, len(ids) if target.timed else len(allowed))
        with self._lock:
            self._allowed[key] = made
            while len(self._allowed) > self.cache_size:
                self._allowed.popitem(last=False)
        return made


def with_live(found: TopK, scope: Scope, query: np.ndarray, k: int) -> TopK:
    """One row of base results merged with the live items in `scope`, best first, at most k."""
    if not len(scope.live_ids):
        return found
    if scope.fusion is not None:
        query = scope.fusion.expand(query[None])[0]
    valid = found.ids[0] >= 0
    scores = np.concatenate([found.scores[0][valid], scope.live_vectors @ query])
    ids = np.concatenate([found.ids[0][valid], scope.live_ids])
    order = np.argsort(-scores, kind="stable")[:k]
    return TopK(scores[order][None].astype(np.float32), ids[order][None])


def best_per_item(found: TopK) -> TopK:
    """A one-row ranking of video segments as one of their items, each at its best segment's score."""
    ids = found.ids[0][found.ids[0] >= 0]
    items = segments.items_of(ids)
    _, first = np.unique(items, return_index=True)
    first.sort()  # best first, as the segments were
    return TopK(found.scores[:, :len(ids)][:, first], items[first][None])


def fused_searchers(collection: Collection, searchers: Mapping[Modality, Searcher], devices: Sequence[torch.device],
                    use_gpu: bool) -> dict[Modality, Searcher]:
    """The fused rows of a fused bundle's image items and of its videos' segments (Bundle.fused_modalities),
    each searched as its modality's index is (by target): held row for row like the exact index, or
    for images the bundle's fused index beside an approximate one (same ids, same kind of index). An
    empty base has none: a search of it searches the live items alone."""
    bundle = collection.bundle
    made: dict[Modality, Searcher] = {}
    for modality in bundle.fused_modalities:
        searcher = searchers.get(modality)
        if searcher is None or not bundle.indices[modality].ntotal:
            continue
        if modality is Modality.IMAGE and bundle.fused_index is not None:
            made[modality] = searcher_for(bundle.fused_index, False, devices, use_gpu)
        elif not isinstance(searcher, ExactSearcher):
            raise BundleError(f"a fused bundle needs its exact {modality.value} index searched as a resident matrix, "
                              f"and it did not fit on {', '.join(map(str, devices))}")
        else:
            row_ids = searcher.index.row_ids
            made[modality] = _held_fused(collection, searcher, segments.items_of(row_ids) if modality.timed
                                         else row_ids, devices)
    return made


def _held_fused(collection: Collection, searcher: ExactSearcher, item_ids: np.ndarray,
                devices: Sequence[torch.device]) -> Searcher:
    """The exact `searcher`'s rows as fused rows, held as it holds them; `item_ids`: whose texts each row takes."""
    bundle = collection.bundle
    assert bundle.fusion is not None
    rows = collection.base_fused_rows(bundle.fusion.text_parts, item_ids, searcher.index.vectors())
    try:
        return searcher.like(rows)
    except torch.OutOfMemoryError:
        raise BundleError(f"{len(item_ids)} fused rows ({rows.nbytes / 2**30:.1f} GiB in fp32) do not "
                          f"fit on {', '.join(map(str, devices))}") from None

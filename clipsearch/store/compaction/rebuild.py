"""A compaction's new base, index by index: the base's rows not hidden and the live ones, put into
an index of the same kind without training (exact indices rebuilt; IVF and on-disk IVF-PQ ones
refilled with their trained quantizer) until the rows added since training pass the policy's
`retrain_fraction`; then trained, tuned and measured again as the indexer builds them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from clipsearch.config import CompactionPolicy
from clipsearch.errors import CannotCompact, IndexSettingsInvalid
from clipsearch.index import faiss_index, ondisk
from clipsearch.index.fusion import FUSED_MODALITIES, fused_rows_by_id
from clipsearch.index.spec import EXACT_FACTORY, RECALL_QUERIES, default_factory
from clipsearch.modality import Modality
from clipsearch.store import segments
from clipsearch.store.bundle import FUSED_FILE, Bundle, FusedContent, ModalityContent, on_disk_name
from clipsearch.store.live import LiveState


@dataclass
class NewBase:
    """The ids (ascending) and vectors of one modality's items in the new base."""

    ids: np.ndarray
    vectors: np.ndarray | None
    """In memory; None for an on-disk index's, read from `chunks` instead."""
    added: int
    """Live rows folded in (adds and replacements): what an IVF index takes without training."""
    chunks: ondisk.Chunks | None = None
    """A pass over the vectors a block at a time (an on-disk index's store, merged with the live rows)."""

    def recall_queries(self) -> np.ndarray:
        """Up to RECALL_QUERIES of the vectors: the other modality's cross-modal recall queries."""
        if self.vectors is not None:
            return self.vectors[:RECALL_QUERIES]
        assert self.chunks is not None
        parts, held = [], 0
        for _, vectors in self.chunks():
            parts.append(vectors[:RECALL_QUERIES - held])
            held += len(parts[-1])
            if held >= RECALL_QUERIES:
                break
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def all_vectors(self) -> np.ndarray:
        if self.vectors is not None:
            return self.vectors
        assert self.chunks is not None
        return np.concatenate([vectors for _, vectors in self.chunks()])


class Rebuild:
    """The new indices of one compaction of `bundle`, as of the snapshot `state`; new on-disk
    indices are written under `work`. `retrained` lists the modalities whose index was trained
    again, and `recall_at_10` the recall each of them reached."""

    def __init__(self, bundle: Bundle, state: LiveState, policy: CompactionPolicy, use_gpu: bool, work: Path) -> None:
        self.bundle, self.state, self.policy, self.use_gpu, self.work = bundle, state, policy, use_gpu, work
        self.path = bundle.path
        self.retrained: list[str] = []
        self.recall_at_10: dict[str, float] = {}

    def new_base(self, modality: Modality) -> NewBase:
        """The ids (ascending) and vectors of `modality`'s items as of the snapshot."""
        if modality in self.bundle.stores:
            return self._new_on_disk_base(modality)
        index = self.bundle.indices.get(modality)
        dim = self.bundle.manifest.dim_of(modality)
        kept, kept_vectors = np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        if index is not None:
            if not faiss_index.is_lossless(index):
                factory = self.bundle.manifest.modalities[modality].index.factory
                raise CannotCompact(f"the {modality.value} index ({factory}) stores compressed vectors, which "
                                    "cannot be read back exactly; rebuild the bundle to fold its live changes in")
            held = faiss_index.ids_of(index)
            kept = np.setdiff1d(held, self._hidden(modality, held), assume_unique=True)
            kept_vectors = faiss_index.reconstruct_many(index, kept)
        segment = self.state.segment(modality)
        ids = np.concatenate([kept, segment.ids])
        vectors = np.concatenate([kept_vectors, segment.vectors.reshape(-1, dim)])
        order = np.argsort(ids, kind="stable")
        return NewBase(ids[order], np.ascontiguousarray(vectors[order]), added=len(segment.ids))

    def _hidden(self, modality: Modality, held: np.ndarray) -> np.ndarray:
        """The ids among `held` (an index's) of the base items the snapshot hides: a video's segments' for videos."""
        removed = self.state.removed_of(modality)
        return segments.of_items(removed, held) if modality.timed else removed

    def _live_texts(self, modality: Modality, part: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and vectors of the snapshot's live items of `modality` that have a text of `part`
        (a video's once, from its first segment's row)."""
        segment = self.state.segment(modality)
        live = segment.texts.get(part)
        if live is None:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        rows = live.present & (segments.positions_of(segment.ids) == 0) if modality.timed else live.present
        ids = segments.items_of(segment.ids[rows]) if modality.timed else segment.ids[rows]
        return ids, live.vectors[rows]

    def _new_on_disk_base(self, modality: Modality) -> NewBase:
        """An on-disk index's new base: its stored rows not hidden, and the live ones, read a block
        at a time from its fp16 store."""
        store = self.bundle.stores[modality]
        stored_ids = np.asarray(store.ids)
        keep = ~np.isin(stored_ids, self._hidden(modality, stored_ids))
        segment = self.state.segment(modality)
        live_vectors = segment.vectors.reshape(-1, self.bundle.manifest.dim_of(modality))
        ids = np.sort(np.concatenate([stored_ids[keep], segment.ids]))
        return NewBase(ids, None, added=len(segment.ids),
                        chunks=ondisk.chunks_from_store(store, keep, segment.ids, live_vectors))

    def fused(self, images: NewBase | None, content: dict[Modality, ModalityContent]) -> FusedContent:
        """A fused bundle's text vectors as of the snapshot (for each part, the base's less those of
        hidden items, and those of live images and videos with that text), and its fused index over
        the new image base: refilled with no training as the image index was, else built again."""
        fusion = self.bundle.fusion
        assert fusion is not None
        texts, held = {}, {}
        hidden = np.concatenate([self.state.removed_of(modality) for modality in FUSED_MODALITIES])
        for part in fusion.text_parts:
            base = self.bundle.texts[part]
            kept = np.setdiff1d(faiss_index.ids_of(base), hidden)
            live_ids, live_vectors = zip(*(self._live_texts(modality, part, base.d) for modality in FUSED_MODALITIES),
                                         strict=True)
            ids = np.concatenate([kept, *live_ids])
            vectors = np.concatenate([faiss_index.reconstruct_many(base, kept), *live_vectors])
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order], np.ascontiguousarray(vectors[order])
            held[part] = ids, vectors
            texts[part], _ = faiss_index.build_index(vectors, ids, EXACT_FACTORY)
        record = self.bundle.manifest.fused_index
        image_content = content.get(Modality.IMAGE)
        if record is None or images is None or image_content is None or image_content.spec.exact:
            return FusedContent(fusion, texts)
        rows = fused_rows_by_id(fusion.text_parts, images.ids, images.all_vectors(), held)
        if Modality.IMAGE.value in self.retrained:
            index, spec = faiss_index.build_index(rows, images.ids, record.factory, use_gpu=self.use_gpu)
        else:
            trained = faiss_index.load_index(self.path / FUSED_FILE, mmap=False)
            index = faiss_index.refill_index(trained, rows, images.ids)
            faiss_index.apply_params(index, record.params)
            spec = replace(record, params={**record.params, "added_since_training": images.added +
                                           int(record.params.get("added_since_training", 0))})
        return FusedContent(fusion, texts, ModalityContent(index, spec))

    def index(self, modality: Modality, base: NewBase, queried_by: Modality | None,
              others: np.ndarray | None) -> ModalityContent:
        """The new index of `modality`, its recall measured with `others`, vectors of `queried_by`."""
        record = self.bundle.manifest.modalities.get(modality)
        queries_label = None if queried_by is None else f"{queried_by.value} (cross-modal)"
        if record is not None and record.index.params.get("on_disk"):
            try:
                return self._on_disk_index(modality, base, others, queries_label)
            except IndexSettingsInvalid:  # too few items left for its lists: exact search then
                record = None
        elif record is not None and not record.index.exact:
            params = record.index.params
            added = int(params.get("added_since_training", 0)) + base.added
            trained_with = int(params.get("trained_with", record.count))
            if added < self.policy.retrain_fraction * trained_with:
                refilled = faiss_index.refill_index(self._in_memory(modality), base.all_vectors(), base.ids)
                faiss_index.apply_params(refilled, params)
                return ModalityContent(refilled, replace(record.index, params={
                    **params, "added_since_training": added}))
        # A new modality, an exact index, or an IVF index due for training: built as a build would.
        factory = record.index.factory if record is not None else default_factory(len(base.ids))
        vectors = base.all_vectors()
        try:
            index, spec = faiss_index.build_index(vectors, base.ids, factory, others, queries_label,
                                                  use_gpu=self.use_gpu)
        except IndexSettingsInvalid:  # too few items left for its lists: exact search then
            index, spec = faiss_index.build_index(vectors, base.ids, EXACT_FACTORY)
        if not spec.exact:
            self.retrained.append(modality.value)
            if spec.recall_at_10 is not None:
                self.recall_at_10[modality.value] = spec.recall_at_10
        return ModalityContent(index, spec)

    def _on_disk_index(self, modality: Modality, base: NewBase, others: np.ndarray | None,
                       queries_label: str | None) -> ModalityContent:
        """An on-disk index's new lists and store: refilled with no training (and its search
        settings kept) while the rows added since training stay few, else built again as the
        indexer builds it (trained, tuned, its recall recorded)."""
        assert base.chunks is not None
        record = self.bundle.manifest.modalities[modality]
        params = record.index.params
        added = int(params.get("added_since_training", 0)) + base.added
        trained_with = int(params.get("trained_with", record.count))
        work, name = self.work / modality.value, on_disk_name(modality)
        if added < self.policy.retrain_fraction * trained_with:
            trained = ondisk.emptied(self.path / record.index_file)
            files = ondisk.refill_on_disk(base.chunks, len(base.ids), trained, work, name)
            faiss_index.apply_params(files.index, params)
            return ModalityContent(files.index, replace(record.index, params={**params, "added_since_training": added}),
                                   on_disk=files)
        files, spec = ondisk.build_on_disk(base.chunks, len(base.ids), self.bundle.manifest.dim_of(modality),
                                           record.index.factory, work, name, others, queries_label)
        self.retrained.append(modality.value)
        if spec.recall_at_10 is not None:
            self.recall_at_10[modality.value] = spec.recall_at_10
        return ModalityContent(files.index, spec, on_disk=files)

    def _in_memory(self, modality: Modality) -> faiss.Index:
        """The modality's index read whole into memory (a served one may be memory-mapped read-only)."""
        return faiss_index.load_index(self.path / self.bundle.manifest.modalities[modality].index_file,
                                      mmap=False)

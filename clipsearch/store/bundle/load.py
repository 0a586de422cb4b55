"""Loading a bundle: its manifest checked, every file's size (and by default checksum) verified, its
indices opened (on-disk ones read-only, with their fp16 stores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from clipsearch.errors import BundleError, BundleFileMissing, ChecksumMismatch, InvalidQuery, ManifestInvalid
from clipsearch.index import faiss_index, ondisk
from clipsearch.index.fusion import FUSED_MODALITIES, Fusion
from clipsearch.modality import Modality
from clipsearch.store.bundle.layout import FUSED_FILE, on_disk_file_names, text_part_file_name
from clipsearch.store.items import ITEMS_FILE, ItemStore
from clipsearch.store.manifest import (
    MANIFEST_FILE,
    Manifest,
    read_manifest,
)
from clipsearch.util.files import file_sha256


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    indices: dict[Modality, faiss.Index]
    items: ItemStore
    texts: dict[str, faiss.Index] = field(default_factory=dict)
    """A fused bundle's vectors of each text part it fuses (clipsearch.index.fusion), by image item id."""
    fused_index: faiss.Index | None = None
    """A fused bundle's approximate index over its images' fused rows (None: searched exactly)."""
    stores: dict[Modality, ondisk.VectorStore] = field(default_factory=dict)
    """The fp16 vectors of the modalities whose index is on disk (clipsearch.index.ondisk)."""

    def base_ids(self, modality: Modality) -> np.ndarray:
        """The ids (int64, ascending) of the base items of `modality` (a video's: its segments'; none
        for a modality the bundle lacks)."""
        if modality not in self.indices:
            return np.zeros(0, np.int64)
        store = self.stores.get(modality)
        return np.asarray(store.ids) if store is not None else faiss_index.ids_of(self.indices[modality])

    def base_vectors(self, modality: Modality, ids: np.ndarray) -> np.ndarray:
        """The stored vectors (float32 (m, d)) of base items `ids`, all of `modality` (an on-disk
        index's from its fp16 store: its PQ codes are too coarse to stand for them)."""
        if modality not in self.indices and not len(ids):
            return np.zeros((0, self.manifest.dim_of(modality)), np.float32)
        store = self.stores.get(modality)
        return store.vectors_of(ids) if store is not None else \
            faiss_index.reconstruct_many(self.indices[modality], ids)

    def base_vector(self, modality: Modality, item_id: int) -> np.ndarray | None:
        store = self.stores.get(modality)
        return store.vector(item_id) if store is not None else \
            faiss_index.reconstruct(self.indices[modality], item_id)

    @property
    def fusion(self) -> Fusion | None:
        """The bundle's default fusion weights, over the text parts it stores; None when not fused."""
        weights = self.manifest.fusion
        return None if weights is None else Fusion.of(weights)

    @property
    def fused_modalities(self) -> frozenset[Modality]:
        """The items a fused bundle searches by their fused rows (clipsearch.index.fusion): its images, and
        its videos unless their index is approximate (one has no fused twin); none when not fused."""
        if self.fusion is None:
            return frozenset()
        video = self.manifest.modalities.get(Modality.VIDEO)
        return frozenset(modality for modality in FUSED_MODALITIES
                         if modality is Modality.IMAGE or video is None or video.index.exact)

    def close(self) -> None:
        self.items.close()
        for store in self.stores.values():
            store.close()


def load_bundle(path: Path, verify_checksums: bool = True) -> Bundle:
    """Open a bundle for serving after checking it is complete and unaltered.

    Raises BundleFileMissing, ChecksumMismatch, UnsupportedFormatVersion or ManifestInvalid, each
    naming the file and the problem.
    """
    manifest = read_manifest(path)
    for name, file_record in manifest.files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleFileMissing(f"{name}: listed in {MANIFEST_FILE} but missing from the bundle at {path}")
        if file_path.stat().st_size != file_record.bytes:
            raise ChecksumMismatch(f"{name}: size is {file_path.stat().st_size} bytes, the manifest "
                                   f"recorded {file_record.bytes}; the file was altered or truncated")
        if verify_checksums and file_sha256(file_path) != file_record.sha256:
            raise ChecksumMismatch(f"{name}: sha256 does not match the manifest; the file was altered")
    for required in (ITEMS_FILE, *(record.index_file for record in manifest.modalities.values())):
        if required not in manifest.files:
            raise ManifestInvalid(f"{MANIFEST_FILE}: {required} is not listed among the bundle's files")
    indices = {}
    stores = {}
    for modality, record in manifest.modalities.items():
        if record.index.params.get("on_disk"):
            index = ondisk.load(path / record.index_file)
            _, vectors_name, ids_name = on_disk_file_names(modality)
            stores[modality] = ondisk.VectorStore(path / vectors_name, path / ids_name)
        else:
            index = faiss_index.load_index(path / record.index_file)
        if index.d != manifest.dim_of(modality):
            raise BundleError(f"{record.index_file}: vectors have dimension {index.d}, "
                              f"the manifest says {manifest.dim_of(modality)}")
        faiss_index.apply_params(index, record.index.params)
        indices[modality] = index
    texts = {}
    if manifest.fusion is not None:
        try:
            fusion = Fusion.of(manifest.fusion)
        except InvalidQuery as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: fusion: {error}") from None
        for part in fusion.text_parts:
            name = text_part_file_name(part)
            if name not in manifest.files:
                raise ManifestInvalid(f"{MANIFEST_FILE}: the bundle fuses {part} but {name} is not among its files")
            texts[part] = faiss_index.load_index(path / name)
    fused_index = None
    if manifest.fused_index is not None:
        fused_index = faiss_index.load_index(path / FUSED_FILE)
        faiss_index.apply_params(fused_index, manifest.fused_index.params)
    return Bundle(path=path, manifest=manifest, indices=indices, items=ItemStore(path / ITEMS_FILE), texts=texts,
                  fused_index=fused_index, stores=stores)

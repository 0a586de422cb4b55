"""The names of a bundle's files, and what a build or a compaction hands over to be written."""

from __future__ import annotations

from dataclasses import dataclass

import faiss

from clipsearch.index import ondisk
from clipsearch.index.fusion import Fusion
from clipsearch.index.spec import IndexSpec
from clipsearch.modality import Modality
from clipsearch.store.manifest import Manifest

REPORT_FILE = "report.json"
FUSED_FILE = "fused.faiss"


def text_part_file_name(part: str) -> str:
    """A fused bundle's vectors of one text part ("caption.faiss", "ocr.faiss")."""
    return f"{part}.faiss"


def index_file_name(modality: Modality) -> str:
    return f"{modality.value}.faiss"


def resident_bytes(manifest: Manifest) -> int:
    """The bytes a served bundle holds in memory: its FAISS files, read whole when loaded (an on-disk
    index's .faiss file is its coarse quantizer; its lists and fp16 vectors are mapped from disk, and
    items.sqlite is read as needed, so neither is counted)."""
    return sum(record.bytes for name, record in manifest.files.items() if name.endswith(".faiss"))


def on_disk_name(modality: Modality) -> str:
    """What an on-disk index's files are named after (`ondisk.build_on_disk`'s `name`): the
    index finds its lists by this name beside it, so it is fixed at build time."""
    return modality.value


def on_disk_file_names(modality: Modality) -> tuple[str, str, str]:
    """The inverted lists, fp16 vectors and ids files of an on-disk index."""
    name = on_disk_name(modality)
    return f"{name}.ivfdata", f"{name}.vectors.npy", f"{name}.ids.npy"


@dataclass(frozen=True)
class ModalityContent:
    """What the builder hands over for one modality."""

    index: faiss.Index
    spec: IndexSpec
    on_disk: ondisk.OnDiskFiles | None = None
    """For an on-disk index: its files, in the build's work directory, moved into the bundle."""


@dataclass(frozen=True)
class FusedContent:
    """What a fused build hands over besides its indices: default weights and the texts' vectors."""

    fusion: Fusion
    texts: dict[str, faiss.Index]
    """Per text part of the fusion's layout, an IndexIDMap2 over a Flat index: the vectors of the
    image items that have that text, by item id."""
    index: ModalityContent | None = None
    """For an approximate image index: the same kind of index over the images' fused rows."""

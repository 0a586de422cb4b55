"""manifest.json: what a bundle holds and which model made it. Needs neither torch nor open_clip.

The manifest is the bundle's table of contents: format version, model, dimension, metric,
per-modality counts and index descriptions, package versions, creation time, and the sha256 and
size of every other file. clipsearch/bundle.py writes and checks it; nothing else defines it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from clipsearch.config import ModelRef
from clipsearch.errors import (
    BundleFileMissing,
    ManifestInvalid,
    ModelMismatch,
    StorageLocked,
    UnsupportedFormatVersion,
)
from clipsearch.index.spec import IndexSpec
from clipsearch.modality import Modality
from clipsearch.util.files import atomic_write_text

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
METRIC = "inner_product"
LOCK_POLL_S = 0.02
"""How often a write waiting for the bundle's lock with a timeout tries it again."""
@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModalityRecord:
    count: int
    index_file: str
    index: IndexSpec


@dataclass(frozen=True)
class Manifest:
    """manifest.json, read into a frozen value."""

    format_version: int
    model: ModelRef
    embedding_dim: int
    metric: str
    modalities: dict[Modality, ModalityRecord]
    files: dict[str, FileRecord]
    skipped: int
    created_at: str
    versions: dict[str, str] = field(default_factory=dict)
    corpus_fingerprint: str | None = None
    """Hash of the build's settings and its corpus files' names, sizes and times: an unchanged
    corpus is not built again."""
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    """Retrieval quality of this bundle's model, one record per `indexer eval --bundle` run, oldest
    first (clipsearch.quality.evaluate)."""
    compactions: list[dict[str, Any]] = field(default_factory=list)
    """One record per compaction that folded live changes into this base, oldest first
    (clipsearch.store.compaction)."""
    keyword_fields: list[str] = field(default_factory=list)
    """Metadata fields searched by keyword besides captions and texts (clipsearch.store.keywords)."""
    fusion: dict[str, float] | None = None
    """The default weights of image and caption in image searches, for a bundle built with
    `--fuse`, which stores caption vectors (clipsearch.index.fusion); None otherwise."""
    fused_index: IndexSpec | None = None
    """A fused bundle's approximate index over its images' fused rows (when its image index is
    approximate too); None when fused rows are searched exactly."""
    ocr: dict[str, Any] | None = None
    """For a bundle built with `--ocr`: the engine that read its images' text and its settings
    (config.OcrConfig.as_record), which `indexer sync` and live writes of images follow; None otherwise."""
    video: dict[str, Any] | None = None
    """For a bundle built with videos: how they were cut into segments (config.VideoSampling), which
    `indexer sync` and live writes of videos follow; None otherwise."""
    audio: dict[str, Any] | None = None
    """For a bundle built with sound files: the audio model that embedded them, its `embedding_dim`,
    and how recordings were cut into windows (config.AudioSampling.as_record); None otherwise."""

    def dim_of(self, modality: Modality) -> int:
        """The dimension of `modality`'s vectors: the audio model's for sounds, the model's for the rest
        (and for sounds in a bundle that holds none: no vector of them is ever made)."""
        if modality.own_space and self.audio is not None:
            return int(self.audio["embedding_dim"])
        return self.embedding_dim

    def to_json(self) -> str:
        data = asdict(self)
        data["modalities"] = {modality.value: asdict(record) for modality, record in self.modalities.items()}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            version = data["format_version"]
            if version != FORMAT_VERSION:
                raise UnsupportedFormatVersion(
                    f"{MANIFEST_FILE}: format version {version!r} is not supported; this server reads "
                    f"version {FORMAT_VERSION} (rebuild the bundle with this version of the indexer)")
            modalities = {
                Modality(name): ModalityRecord(count=int(record["count"]), index_file=str(record["index_file"]),
                                               index=IndexSpec(**record["index"]))
                for name, record in data["modalities"].items()}
            return cls(format_version=version, model=ModelRef(**data["model"]),
                       embedding_dim=int(data["embedding_dim"]), metric=str(data["metric"]),
                       modalities=modalities,
                       files={name: FileRecord(**record) for name, record in data["files"].items()},
                       skipped=int(data["skipped"]), created_at=str(data["created_at"]),
                       versions=dict(data.get("versions", {})),
                       corpus_fingerprint=data.get("corpus_fingerprint"),
                       evaluations=list(data.get("evaluations", [])),
                       compactions=list(data.get("compactions", [])),
                       keyword_fields=[str(name) for name in data.get("keyword_fields", [])],
                       fusion=None if data.get("fusion") is None else
                       {str(name): float(weight) for name, weight in data["fusion"].items()},
                       fused_index=None if data.get("fused_index") is None else IndexSpec(**data["fused_index"]),
                       ocr=None if data.get("ocr") is None else dict(data["ocr"]),
                       video=None if data.get("video") is None else dict(data["video"]),
                       audio=None if data.get("audio") is None else dict(data["audio"]))
        except UnsupportedFormatVersion:
            raise
        except json.JSONDecodeError as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: not valid JSON ({error})") from error
        except KeyError as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: missing field {error}") from error
        except (TypeError, ValueError, AttributeError) as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: malformed ({error})") from error


def read_manifest(path: Path) -> Manifest:
    """The manifest of the bundle directory `path`."""
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleFileMissing(f"no bundle directory at {path}")
    if not manifest_path.is_file():
        raise BundleFileMissing(f"{MANIFEST_FILE}: missing from {path} (not a bundle, or its build never finished)")
    return Manifest.from_json(manifest_path.read_text(encoding="utf-8"))


@contextmanager
def compaction_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock that lets one compaction of the bundle at `path` run at a time; without
    `wait`, yield False at once if another process or thread holds it."""
    descriptor = os.open(path.parent / f".{path.name}.compaction.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


@contextmanager
def bundle_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock that serialises changes to the bundle at `path`; with `timeout_s`,
    give up after that long (StorageLocked) rather than wait for as long as another holds it.

    The lock is a file beside the bundle, not the bundle directory or its manifest, because changes
    replace both: a lock on a replaced file would no longer exclude anyone.
    """
    lock_file = path.parent / f".{path.name}.lock"
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        else:
            _flock_within(descriptor, timeout_s, lock_file)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _flock_within(descriptor: int, timeout_s: float, lock_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StorageLocked(f"the bundle's write lock {lock_file} was held by another process (a compaction, "
                                    f"a sync, a rebuild or another server) for over {timeout_s:g} s; nothing was "
                                    "written; retry shortly", str(lock_file)) from None
            time.sleep(LOCK_POLL_S)


def record_evaluation(path: Path, record: dict[str, Any]) -> Manifest:
    """Append `record` to the evaluations in the manifest of the bundle at `path`, atomically.

    Only manifest.json changes (it holds no checksum of itself), so the bundle stays valid. The
    bundle's lock keeps two changes from losing one another's.
    """
    read_manifest(path)  # the clear errors for a missing or unreadable bundle
    with bundle_lock(path):
        manifest = read_manifest(path)
        updated = replace(manifest, evaluations=[*manifest.evaluations, record])
        atomic_write_text(path / MANIFEST_FILE, updated.to_json())
    return updated


def check_model(manifest: Manifest, model: ModelRef, embedding_dim: int) -> None:
    """Refuse to serve a bundle with a model other than the one that built it."""
    if model != manifest.model:
        raise ModelMismatch(f"the bundle was built with {manifest.model.describe()}, "
                            f"but the model loaded is {model.describe()}")
    if embedding_dim != manifest.embedding_dim:
        raise ModelMismatch(f"the model gives {embedding_dim}-d embeddings, the bundle holds "
                            f"{manifest.embedding_dim}-d vectors")


def check_audio_model(manifest: Manifest, model_name: str, embedding_dim: int) -> None:
    """Refuse to serve a bundle's sounds with an audio model other than the one that embedded them."""
    if manifest.audio is None:
        return
    if model_name != manifest.audio["model"] or embedding_dim != int(manifest.audio["embedding_dim"]):
        raise ModelMismatch(f"the bundle's sounds were embedded by {manifest.audio['model']} "
                            f"({manifest.audio['embedding_dim']}-d), but the audio model loaded is {model_name} "
                            f"({embedding_dim}-d)")

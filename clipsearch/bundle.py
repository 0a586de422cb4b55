"""The bundle format, defined here and nowhere else.

A bundle is one directory holding everything a server needs:

    manifest.json   format version, model, dimension, metric, per-modality counts and index
                    descriptions, package versions, creation time, sha256 of every other file
    image.faiss     one FAISS index per modality present (IndexIDMap2, inner product)
    text.faiss
    items.sqlite    one row per item: id, modality, uri, text (caption or text), extra JSON,
                    content hash; ids are the same int64 ids the indices return
    report.json     what the build skipped and why

A bundle is written in a staging directory beside its final path and renamed into place only
once complete, and the manifest (written last) holds checksums of all other files, so nothing
half-written ever loads.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss

from clipsearch import index as faiss_index
from clipsearch.encoder import ModelRef, file_sha256
from clipsearch.errors import (
    BundleError,
    BundleFileMissing,
    ChecksumMismatch,
    ManifestInvalid,
    ModelMismatch,
    UnsupportedFormatVersion,
)
from clipsearch.index import IndexSpec
from clipsearch.modality import Modality

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.sqlite"
REPORT_FILE = "report.json"
METRIC = "inner_product"


def index_file_name(modality: Modality) -> str:
    return f"{modality.value}.faiss"


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
    """Hash of the build's settings and its corpus files' names, sizes and times (for --if-changed)."""

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
                       corpus_fingerprint=data.get("corpus_fingerprint"))
        except UnsupportedFormatVersion:
            raise
        except json.JSONDecodeError as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: not valid JSON ({error})") from error
        except KeyError as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: missing field {error}") from error
        except (TypeError, ValueError, AttributeError) as error:
            raise ManifestInvalid(f"{MANIFEST_FILE}: malformed ({error})") from error


@dataclass(frozen=True)
class Item:
    """One indexed item. `text` is the caption of an image, or the text itself."""

    id: int
    modality: Modality
    uri: str
    text: str | None
    extra: dict[str, Any]
    content_hash: str


@dataclass(frozen=True)
class ModalityContent:
    """What the builder hands over for one modality."""

    index: faiss.Index
    spec: IndexSpec


_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    modality TEXT NOT NULL,
    uri TEXT NOT NULL,
    text TEXT,
    extra TEXT NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX items_by_hash ON items (content_hash);
"""


class ItemStore:
    """Read access to items.sqlite, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        # immutable=1: the file never changes under us, so SQLite skips locking entirely.
        self._connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def get(self, item_id: int) -> Item | None:
        return self.get_many([item_id]).get(item_id)

    def get_many(self, item_ids: Sequence[int]) -> dict[int, Item]:
        wanted = sorted({int(item_id) for item_id in item_ids})
        if not wanted:
            return {}
        placeholders = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._connection.execute(
                f"SELECT id, modality, uri, text, extra, content_hash FROM items WHERE id IN ({placeholders})",
                wanted).fetchall()
        return {row[0]: _item_from_row(row) for row in rows}

    def __iter__(self) -> Iterator[Item]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT id, modality, uri, text, extra, content_hash FROM items ORDER BY id").fetchall()
        return (_item_from_row(row) for row in rows)

    def close(self) -> None:
        self._connection.close()


def _item_from_row(row: tuple[Any, ...]) -> Item:
    return Item(id=row[0], modality=Modality(row[1]), uri=row[2], text=row[3], extra=json.loads(row[4]),
                content_hash=row[5])


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    indices: dict[Modality, faiss.Index]
    items: ItemStore

    def close(self) -> None:
        self.items.close()


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
    for modality, record in manifest.modalities.items():
        index = faiss_index.load_index(path / record.index_file)
        if index.d != manifest.embedding_dim:
            raise BundleError(f"{record.index_file}: vectors have dimension {index.d}, "
                              f"the manifest says {manifest.embedding_dim}")
        faiss_index.apply_params(index, record.index.params)
        indices[modality] = index
    return Bundle(path=path, manifest=manifest, indices=indices, items=ItemStore(path / ITEMS_FILE))


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleFileMissing(f"no bundle directory at {path}")
    if not manifest_path.is_file():
        raise BundleFileMissing(f"{MANIFEST_FILE}: missing from {path} (not a bundle, or its build never finished)")
    return Manifest.from_json(manifest_path.read_text(encoding="utf-8"))


def check_model(manifest: Manifest, model: ModelRef, embedding_dim: int) -> None:
    """Refuse to serve a bundle with a model other than the one that built it."""
    if model != manifest.model:
        raise ModelMismatch(f"the bundle was built with {manifest.model.describe()}, "
                            f"but the model loaded is {model.describe()}")
    if embedding_dim != manifest.embedding_dim:
        raise ModelMismatch(f"the model gives {embedding_dim}-d embeddings, the bundle holds "
                            f"{manifest.embedding_dim}-d vectors")


def write_bundle(out: Path, model: ModelRef, embedding_dim: int, content: dict[Modality, ModalityContent],
                 items: Iterable[Item], report: dict[str, Any], versions: dict[str, str],
                 corpus_fingerprint: str | None = None) -> Manifest:
    """Write a complete bundle at `out`, replacing an earlier bundle there, all or nothing."""
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not a bundle; refusing to overwrite it")
    _remove_debris_of_dead_builds(out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        modalities = {}
        for modality, modality_content in content.items():
            name = index_file_name(modality)
            faiss_index.save_index(modality_content.index, staging / name)
            modalities[modality] = ModalityRecord(count=int(modality_content.index.ntotal), index_file=name,
                                                  index=modality_content.spec)
        _write_items(staging / ITEMS_FILE, items)
        _write_text_atomically(staging / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False))
        files = {child.name: FileRecord(sha256=file_sha256(child), bytes=child.stat().st_size)
                 for child in sorted(staging.iterdir())}
        manifest = Manifest(format_version=FORMAT_VERSION, model=model, embedding_dim=embedding_dim,
                            metric=METRIC, modalities=modalities, files=files,
                            skipped=len(report.get("skipped", [])),
                            created_at=datetime.now(UTC).isoformat(timespec="seconds"), versions=versions,
                            corpus_fingerprint=corpus_fingerprint)
        _write_text_atomically(staging / MANIFEST_FILE, manifest.to_json())
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_items(path: Path, items: Iterable[Item]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    connection = sqlite3.connect(temporary)
    try:
        connection.executescript(_SCHEMA)
        connection.executemany(
            "INSERT INTO items (id, modality, uri, text, extra, content_hash) VALUES (?, ?, ?, ?, ?, ?)",
            ((item.id, item.modality.value, item.uri, item.text, json.dumps(item.extra, ensure_ascii=False),
              item.content_hash) for item in items))
        connection.commit()
    finally:
        connection.close()
    os.replace(temporary, path)


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _remove_debris_of_dead_builds(out: Path) -> None:
    """Delete staging and retired folders left by builds that were killed (their process is gone)."""
    for debris in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = debris.name.rpartition("-")
        if not kind.endswith((".staging", ".retired")) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(debris, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to `out`; an old bundle there is removed after."""
    if not out.exists():
        os.replace(staging, out)
        return
    retired = out.with_name(f".{out.name}.retired-{os.getpid()}")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(out, retired)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)

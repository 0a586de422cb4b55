"""Build a bundle: read the corpora, encode them in batches, write shards, then the bundle.

Embeddings are written in shards of fixed positions as the build goes. A build that dies (even
kill -9) and is started again with the same arguments continues after its last finished shard
and ends with the same bundle as an uninterrupted one: batches never cross shard boundaries, so
every item is encoded in exactly the same batch either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from clipsearch import index as faiss_index
from clipsearch.bundle import Item, ModalityContent, write_bundle
from clipsearch.encoder import DEFAULT_MODEL, DEFAULT_PRETRAINED, ClipEncoder, load_encoder
from clipsearch.errors import ResumeMismatch
from clipsearch.images import DEFAULT_MAX_PIXELS
from clipsearch.loading import LoadedBatch, Outcome, image_batches, text_batches
from clipsearch.modality import Modality
from clipsearch.sources import Columns, SourceItem, read_image_source, read_text_source

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
FINGERPRINT_FILE = "build.json"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a bundle's content, plus how fast it is made (workers, device)."""

    out: Path
    images: Path | None = None
    texts: Path | None = None
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    checkpoint: Path | None = None
    device: str | None = None
    batch_size: int = 256
    workers: int = min(8, os.cpu_count() or 1)
    index_factory: str | None = None
    flat_threshold: int = faiss_index.DEFAULT_FLAT_THRESHOLD
    keep_duplicates: bool = False
    batches_per_shard: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    columns: Columns = field(default_factory=Columns)
    progress: bool = True


@dataclass
class BuildSummary:
    out: Path
    indexed: dict[str, int]
    skipped: int
    duplicates: int
    elapsed_s: float
    resumed_shards: int
    report: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return sum(self.indexed.values()) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        counts = ", ".join(f"{count} {modality}s" for modality, count in self.indexed.items())
        resumed = f", resumed after {self.resumed_shards} finished shards" if self.resumed_shards else ""
        return (f"indexed {counts or 'nothing'}; skipped {self.skipped}, duplicates {self.duplicates}; "
                f"{self.elapsed_s:.1f} s, {self.items_per_s:.1f} items/s{resumed} → {self.out}")


def build(config: BuildConfig, on_shard_written: Callable[[Path], None] | None = None) -> BuildSummary:
    """Read, encode and write: the whole build, resumable shard by shard."""
    started = time.perf_counter()
    sources = read_sources(config)
    if not sources:
        raise ValueError("give --images, --texts or both")
    encoder = load_encoder(config.model, config.pretrained, config.checkpoint, config.device)
    work = _prepare_work_dir(config, encoder, sources)
    first_id = {Modality.IMAGE: 0, Modality.TEXT: len(sources.get(Modality.IMAGE, []))}
    resumed = 0
    for modality, items in sources.items():
        resumed += _encode_into_shards(config, encoder, modality, items, first_id[modality], work, on_shard_written)
    summary = _finish(config, encoder, sources, work, started)
    summary.resumed_shards = resumed
    shutil.rmtree(work, ignore_errors=True)
    return summary


def corpus_fingerprint(config: BuildConfig, sources: dict[Modality, list[SourceItem]] | None = None) -> str:
    """A hash of what decides the bundle: the content settings, and every corpus file's name, size and mtime."""
    sources = sources if sources is not None else read_sources(config)
    digest = hashlib.sha256()
    settings = {"model": config.model, "pretrained": config.pretrained, "checkpoint": _stat(config.checkpoint),
                "index_factory": config.index_factory, "flat_threshold": config.flat_threshold,
                "keep_duplicates": config.keep_duplicates, "max_pixels": config.max_pixels,
                "columns": asdict(config.columns), "images": _stat(config.images), "texts": _stat(config.texts)}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(_listing_hash(sources).encode())
    return digest.hexdigest()


def _listing_hash(sources: dict[Modality, list[SourceItem]]) -> str:
    """A hash of every item: where it is, its file's size and mtime, its text, metadata and problem."""
    digest = hashlib.sha256()
    for modality, items in sources.items():
        for item in items:
            digest.update(f"{modality}\0{item.uri}\0{_stat(item.path)}\0{item.text}\0{item.extra}\0{item.problem}\n"
                          .encode())
    return digest.hexdigest()


def read_sources(config: BuildConfig) -> dict[Modality, list[SourceItem]]:
    sources: dict[Modality, list[SourceItem]] = {}
    if config.images is not None:
        sources[Modality.IMAGE] = read_image_source(config.images, config.columns)
    if config.texts is not None:
        sources[Modality.TEXT] = read_text_source(config.texts, config.columns)
    return sources


def _stat(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    status = path.stat()
    return f"{path}:{status.st_size}:{status.st_mtime_ns}"


def work_dir_for(out: Path) -> Path:
    """Where an unfinished build keeps its shards: a hidden sibling of the bundle."""
    return out.with_name(f".{out.name}.partial")


def _prepare_work_dir(config: BuildConfig, encoder: ClipEncoder, sources: dict[Modality, list[SourceItem]]) -> Path:
    """Create the work dir, or check that the one found belongs to a build with the same arguments."""
    fingerprint = {
        "model": asdict(encoder.ref), "device": encoder.device.type, "batch_size": config.batch_size,
        "batches_per_shard": config.batches_per_shard, "keep_duplicates": config.keep_duplicates,
        "max_pixels": config.max_pixels, "corpus": _listing_hash(sources),
        "counts": {modality.value: len(items) for modality, items in sources.items()},
    }
    work = work_dir_for(config.out)
    fingerprint_path = work / FINGERPRINT_FILE
    if fingerprint_path.is_file():
        found = json.loads(fingerprint_path.read_text())
        if found != fingerprint:
            differing = sorted(key for key in fingerprint.keys() | found.keys()
                               if fingerprint.get(key) != found.get(key))
            raise ResumeMismatch(
                f"an unfinished build at {work} was started with different {', '.join(differing)}; "
                f"run again with the same arguments to resume it, or delete that folder to start over")
        log.info("resuming the unfinished build in %s", work)
        return work
    (work / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    temporary = fingerprint_path.with_name(FINGERPRINT_FILE + ".tmp")
    temporary.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    os.replace(temporary, fingerprint_path)
    return work


def _shard_path(work: Path, modality: Modality, number: int) -> Path:
    return work / SHARDS_DIR / f"{modality.value}-{number:06d}.npz"


def _encode_into_shards(config: BuildConfig, encoder: ClipEncoder, modality: Modality, items: list[SourceItem],
                        first_id: int, work: Path, on_shard_written: Callable[[Path], None] | None) -> int:
    """Encode `items` from the first unfinished shard on; returns how many shards were already done."""
    shard_size = config.batch_size * config.batches_per_shard
    shard_count = -(-len(items) // shard_size)
    done = 0
    while done < shard_count and _shard_path(work, modality, done).is_file():
        done += 1
    seen = _hashes_in_shards(work, modality, done)
    start = min(done * shard_size, len(items))
    bar = tqdm(total=len(items), initial=start, unit=modality.value, desc=f"encoding {modality.value}s",
               disable=not config.progress, smoothing=0.1, dynamic_ncols=True)
    batches = image_batches(items, encoder, start, config.batch_size, config.workers, config.max_pixels) \
        if modality is Modality.IMAGE else text_batches(items, start, config.batch_size)
    shard: list[Outcome] = []
    for batch in batches:
        _dedupe(batch.outcomes, seen, first_id, config.keep_duplicates)
        _encode_batch(encoder, batch)
        shard.extend(batch.outcomes)
        bar.update(len(batch.outcomes))
        if len(shard) == shard_size or batch.outcomes[-1].position == len(items) - 1:
            path = _shard_path(work, modality, shard[0].position // shard_size)
            _write_shard(path, shard, first_id, encoder.embedding_dim)
            shard = []
            if on_shard_written is not None:
                on_shard_written(path)
    bar.close()
    return done


def _dedupe(batch: list[Outcome], seen: dict[str, int], first_id: int, keep_duplicates: bool) -> None:
    for outcome in batch:
        if outcome.problem is not None or outcome.content_hash is None:
            continue
        if outcome.content_hash in seen and not keep_duplicates:
            outcome.duplicate_of = seen[outcome.content_hash]
            outcome.problem = f"duplicate of item {outcome.duplicate_of}"
            outcome.payload = None
        else:
            seen.setdefault(outcome.content_hash, first_id + outcome.position)


def _encode_batch(encoder: ClipEncoder, batch: LoadedBatch) -> None:
    """Set each usable outcome's payload (its text, or nothing for an image) to its embedding."""
    if batch.pixels is not None:
        # Rows of items found to be duplicates after decoding are encoded too, then dropped: cheaper
        # than restacking the batch.
        vectors = encoder.encode_images(batch.pixels)
        for outcome, vector in zip(batch.decoded, vectors, strict=True):
            if outcome.problem is None:
                outcome.payload = vector
        return
    usable = [outcome for outcome in batch.outcomes if outcome.problem is None and isinstance(outcome.payload, str)]
    if usable:
        vectors = encoder.encode_texts([outcome.payload for outcome in usable])
        for outcome, vector in zip(usable, vectors, strict=True):
            outcome.payload = vector


def _write_shard(path: Path, shard: list[Outcome], first_id: int, dim: int) -> None:
    encoded = [outcome for outcome in shard if outcome.problem is None]
    vectors = np.stack([outcome.payload for outcome in encoded]).astype(np.float32) if encoded \
        else np.zeros((0, dim), dtype=np.float32)
    records = [{"id": first_id + outcome.position, "uri": outcome.source.uri, "text": outcome.source.text,
                "extra": outcome.source.extra, "hash": outcome.content_hash, "problem": outcome.problem,
                "duplicate_of": outcome.duplicate_of}
               for outcome in shard]
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array([first_id + outcome.position for outcome in encoded], dtype=np.int64),
             vectors=vectors, records=np.array(json.dumps(records, ensure_ascii=False)))
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(buffer.getvalue())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


_Shard = tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]


def _read_shards(work: Path, modality: Modality, count: int | None = None) -> Iterator[_Shard]:
    number = 0
    while (count is None or number < count) and (path := _shard_path(work, modality, number)).is_file():
        with np.load(path, allow_pickle=False) as shard:
            yield shard["ids"], shard["vectors"], json.loads(str(shard["records"]))
        number += 1


def _hashes_in_shards(work: Path, modality: Modality, count: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _, _, records in _read_shards(work, modality, count):
        for record in records:
            if record["problem"] is None:
                seen.setdefault(record["hash"], record["id"])
    return seen


def _finish(config: BuildConfig, encoder: ClipEncoder, sources: dict[Modality, list[SourceItem]], work: Path,
            started: float) -> BuildSummary:
    """Gather the shards, build one index per modality and write the bundle."""
    vectors: dict[Modality, np.ndarray] = {}
    ids: dict[Modality, np.ndarray] = {}
    items: list[Item] = []
    skipped: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    for modality in sources:
        parts = list(_read_shards(work, modality))
        ids[modality] = np.concatenate([part[0] for part in parts]) if parts else np.zeros(0, np.int64)
        vectors[modality] = np.concatenate([part[1] for part in parts]) if parts \
            else np.zeros((0, encoder.embedding_dim), np.float32)
        for _, _, records in parts:
            for record in records:
                if record["problem"] is None:
                    items.append(Item(id=record["id"], modality=modality, uri=record["uri"], text=record["text"],
                                      extra=record["extra"], content_hash=record["hash"]))
                else:
                    entry = {"modality": modality.value, "uri": record["uri"], "reason": record["problem"]}
                    (skipped if record["duplicate_of"] is None else duplicates).append(entry)
    content = {}
    use_gpu = encoder.device.type == "cuda" and faiss_index.gpu_available()
    for modality in sources:
        others = [vectors[other] for other in sources if other is not modality and len(vectors[other])]
        factory = config.index_factory or faiss_index.default_factory(len(vectors[modality]), config.flat_threshold)
        index, spec = faiss_index.build_index(
            vectors[modality], ids[modality], factory, recall_queries=others[0] if others else None,
            queries_label=f"{'text' if modality is Modality.IMAGE else 'image'} (cross-modal)" if others else None,
            use_gpu=use_gpu)
        content[modality] = ModalityContent(index=index, spec=spec)
    report = {"skipped": skipped, "duplicates": duplicates}
    write_bundle(config.out, encoder.ref, encoder.embedding_dim, content, items, report, _versions(),
                 corpus_fingerprint(config, sources))
    return BuildSummary(out=config.out, indexed={modality.value: len(ids[modality]) for modality in sources},
                        skipped=len(skipped), duplicates=len(duplicates),
                        elapsed_s=time.perf_counter() - started, resumed_shards=0, report=report)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "faiss": faiss.__version__}
    for package in ("clipsearch", "torch", "open_clip_torch", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions

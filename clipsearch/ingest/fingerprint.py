"""Fingerprints of a build: one for "is the bundle up to date?", one for "may this build resume?".

Both grow from one dict of the settings that decide the vectors (`embedding_settings`), so they
cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipsearch.config import ModelRef
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.sources import SourceItem
from clipsearch.modality import Modality
from clipsearch.model.int8 import read_calibration


def embedding_settings(config: BuildConfig) -> dict[str, Any]:
    """Every setting that decides which items are embedded and how."""
    return {"model": config.model, "pretrained": config.pretrained, "checkpoint": file_stat(config.checkpoint),
            "backend": config.backend, "keep_duplicates": config.keep_duplicates, "max_pixels": config.max_pixels,
            "columns": asdict(config.columns), "images": file_stat(config.images), "texts": file_stat(config.texts),
            "caption": None if config.caption is None else
            asdict(config.caption) | {"checkpoint": file_stat(config.caption.checkpoint), "device": None}} \
        | ({"text_language": config.text_language} if config.text_language else {}) \
        | ({"ocr": asdict(config.ocr)} if config.ocr is not None else {}) \
        | ({"videos": file_stat(config.videos), "video": asdict(config.video)} if config.videos is not None else {}) \
        | ({"audio": file_stat(config.audio), "sound": asdict(config.sound)} if config.embeds_sounds else {}) \
        | _calibration(config)  # absent, as in older bundles, unless int8


def _calibration(config: BuildConfig) -> dict[str, Any]:
    """What an int8 build's vectors also depend on: the sample its scales were calibrated on."""
    folder = config.calibration_folder
    if not config.backend.endswith("-int8") or folder is None:
        return {}
    return {"int8_calibration": read_calibration(folder).digest()}


def corpus_fingerprint(config: BuildConfig, sources: dict[Modality, list[SourceItem]]) -> str:
    """A hash of what decides the bundle: the embedding and index settings, and every corpus item."""
    settings = embedding_settings(config) | {"index_factory": config.index_factory,
                                             "flat_threshold": config.flat_threshold,
                                             "on_disk_threshold": config.on_disk_threshold,
                                             "rerank": config.rerank,
                                             "keyword_fields": list(config.keyword_fields),
                                             "fuse": None if config.fuse is None else config.fuse.as_dict()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(listing_hash(sources).encode())
    return digest.hexdigest()


def resume_fingerprint(config: BuildConfig, model: ModelRef, device: str,
                       sources: dict[Modality, list[SourceItem]], *, backend: str = "torch") -> dict[str, Any]:
    """What must be unchanged for a build to go on from another's shards: the embedding settings, the
    exact weights, the device, the backend that ran ('auto' resolved) and the batching (the same
    batches give the same vectors), and the corpus."""
    fingerprint = embedding_settings(config) | {
        "model": asdict(model), "device": device, "backend": backend, "batch_size": config.batch_size,
        "batches_per_shard": config.batches_per_shard, "corpus": listing_hash(sources),
        "counts": {modality.value: len(items) for modality, items in sources.items()}}
    # As it reads back from JSON, so that a stored fingerprint compares equal to a fresh one.
    as_json: dict[str, Any] = json.loads(json.dumps(fingerprint, default=str))
    return as_json


def listing_hash(sources: dict[Modality, list[SourceItem]]) -> str:
    """A hash of every item: where it is, its file's size and mtime, its text, metadata and problem."""
    digest = hashlib.sha256()
    for modality, items in sources.items():
        for item in items:
            digest.update(f"{modality}\0{item.uri}\0{file_stat(item.path)}\0{item.text}\0{item.extra}\0"
                          f"{item.problem}\n".encode())
    return digest.hexdigest()


def file_stat(path: Path | None) -> str | None:
    """'path:size:mtime_ns' of a file (None for no file): changes whenever the file is rewritten."""
    if path is None or not path.is_file():
        return None
    status = path.stat()
    return f"{path}:{status.st_size}:{status.st_mtime_ns}"

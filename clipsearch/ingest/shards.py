"""An unfinished build's work directory: its fingerprint and its shards of embeddings.

Each shard holds a fixed range of item positions: the ids and vectors of those encoded, and a
record of every item (uri, text, metadata, content hash, and the problem if it was skipped).
A shard is written whole or not at all, so a build killed at any moment resumes after its last
finished shard.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import ResumeMismatch
from clipsearch.modality import Modality
from clipsearch.util.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
FINGERPRINT_FILE = "build.json"


@dataclass(frozen=True)
class Shard:
    ids: np.ndarray
    """int64 (m,): the encoded items' ids."""
    vectors: np.ndarray
    """float32 (m, d): their unit embeddings, row for row."""
    records: list[dict[str, Any]]
    """Every item of the shard, encoded or skipped, in position order."""


def work_dir_for(out: Path) -> Path:
    """Where an unfinished build keeps its shards: a hidden sibling of the bundle."""
    return out.with_name(f".{out.name}.partial")


class ShardStore:
    """The shards of one build, in `work_dir_for(out)` (in its `directory`: the Ray engine keeps
    the shards it embeds, before duplicates are marked, in a directory of their own)."""

    def __init__(self, work: Path, directory: str = SHARDS_DIR) -> None:
        self.work = work
        self.directory = directory

    @classmethod
    def open(cls, out: Path, fingerprint: dict[str, Any]) -> ShardStore:
        """Create the work dir, or check that the one found belongs to a build with the same fingerprint."""
        store = cls(work_dir_for(out))
        fingerprint_path = store.work / FINGERPRINT_FILE
        if fingerprint_path.is_file():
            found = json.loads(fingerprint_path.read_text())
            if found != fingerprint:
                differing = sorted(key for key in fingerprint.keys() | found.keys()
                                   if fingerprint.get(key) != found.get(key))
                raise ResumeMismatch(
                    f"an unfinished build at {store.work} was started with different {', '.join(differing)}; "
                    f"run again with the same settings to resume it, or delete that folder to start over")
            log.info("resuming the unfinished build in %s", store.work)
            return store
        (store.work / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_text(fingerprint_path, json.dumps(fingerprint, indent=2, sort_keys=True))
        return store

    def path(self, modality: Modality, number: int) -> Path:
        return self.work / self.directory / f"{modality.value}-{number:06d}.npz"

    def finished(self, modality: Modality, shard_count: int) -> int:
        """How many shards of `modality`, from the first on, are already written."""
        done = 0
        while done < shard_count and self.path(modality, done).is_file():
            done += 1
        return done

    def written(self, modality: Modality, shard_count: int) -> set[int]:
        """Which of the shards 0 … shard_count-1 of `modality` are written, in whatever order they were."""
        return {number for number in range(shard_count) if self.path(modality, number).is_file()}

    def write(self, modality: Modality, number: int, shard: Shard) -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, ids=shard.ids.astype(np.int64), vectors=shard.vectors.astype(np.float32),
                 records=np.array(json.dumps(shard.records, ensure_ascii=False)))
        path = self.path(modality, number)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def read(self, modality: Modality, count: int | None = None) -> Iterator[Shard]:
        """The shards of `modality` in order: all written, or the first `count`."""
        number = 0
        while (count is None or number < count) and self.path(modality, number).is_file():
            yield self.read_one(modality, number)
            number += 1

    def read_one(self, modality: Modality, number: int) -> Shard:
        with np.load(self.path(modality, number), allow_pickle=False) as stored:
            return Shard(stored["ids"], stored["vectors"], json.loads(str(stored["records"])))

    def read_ids(self, modality: Modality) -> Iterator[np.ndarray]:
        """The ids of each shard of `modality` in order, without reading its vectors."""
        number = 0
        while (path := self.path(modality, number)).is_file():
            with np.load(path, allow_pickle=False) as stored:
                yield stored["ids"]
            number += 1

    def content_hashes(self, modality: Modality, count: int) -> dict[str, int]:
        """content hash → id of the first item with it, over the first `count` shards."""
        seen: dict[str, int] = {}
        for shard in self.read(modality, count):
            for record in shard.records:
                if record["problem"] is None:
                    seen.setdefault(record["hash"], record["id"])
        return seen

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

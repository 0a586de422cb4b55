"""Makers of the corpora and build settings the tests use: small, generated, deterministic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clipsearch.config import OFFLINE_MODEL
from clipsearch.ingest.config import BuildConfig
from tests.support.imagefiles import image_bytes, noise_image, save


def make_image_corpus(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` distinct noise images in a nested folder, every third with a caption and metadata."""
    for number in range(count):
        sub = folder / ("nested" if number % 2 else "")
        path = save(sub / f"picture_{number:03d}.png", image_bytes(noise_image(seed * 10_000 + number)))
        if number % 3 == 0:
            path.with_suffix(".txt").write_text(f"caption of picture {number}")
            path.with_suffix(".json").write_text(f'{{"number": {number}}}')
    return folder


def make_paired_corpus(folder: Path, count: int, captions_per_image: int = 2, seed: int = 0) -> Path:
    """`count` noise images, each with a sidecar of `captions_per_image` captions, one per line."""
    for number in range(count):
        path = save(folder / f"pair_{number:03d}.png", image_bytes(noise_image(seed * 10_000 + 5_000 + number)))
        path.with_suffix(".txt").write_text("".join(f"caption {line} of pair {number}\n"
                                                    for line in range(captions_per_image)))
    return folder


def make_text_corpus(path: Path, count: int) -> Path:
    path.write_text("".join(f"a sentence about thing number {number}\n" for number in range(count)))
    return path


def write_manifest(folder: Path, kind: str, rows: list[dict[str, object]]) -> Path:
    """An image manifest of `rows` as CSV, JSONL or Parquet."""
    path = folder / f"manifest.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "csv":
        columns = list(rows[0])
        path.write_text(",".join(columns) + "\n" + "".join(",".join(str(row[c]) for c in columns) + "\n"
                                                           for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def tiny_config(out: Path, **overrides: object) -> BuildConfig:
    """Build settings for the offline tiny model on PyTorch on the CPU: small batches and shards, no progress bar."""
    settings: dict[str, object] = dict(out=out, model=OFFLINE_MODEL, pretrained=None, device="cpu", backend="torch",
                                       batch_size=8, workers=0, batches_per_shard=2, progress=False)
    settings.update(overrides)
    return BuildConfig(**settings)  # type: ignore[arg-type]


def private_copy(source: Path, folder: Path) -> Path:
    """A copy of the bundle at `source` in `folder`: live writes land beside it, not in a shared one."""
    return Path(shutil.copytree(source, folder / "bundle"))

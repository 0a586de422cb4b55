"""`indexer build --engine ray`: a build's embedding on Ray Data, on this machine or on a cluster.

The driver (the indexer's process) lists the items with the local engine's readers and keeps
their metadata. Ray Data runs two stages over the positions of the shards not written yet:

1. For images, CPU tasks read, hash, decode and prepare each file with the local engine's own
   function (clipsearch.ingest.loading.read_and_prepare), so the model gets the same uint8 pixels;
   with --ocr they read each image's text too, whose metadata travels to the driver as JSON.
2. An actor pool embeds them, one model per actor. Where the cluster has GPUs, each actor takes
   one, `--batch-size` items per forward pass.

The driver gathers the embedded rows by shard: shard k holds positions [kS, (k+1)S), S being
batch size × batches per shard, exactly as in the local engine. It writes each shard, atomically,
as soon as all its rows are back, in whatever order shards finish, so a rerun skips every shard
written. A last pass, in position order, marks duplicates (the first item with a content keeps it)
and turns these shards into the build's own. From there the bundle is written as for a local build.
On the CPU both engines give the same ids and the same vectors to 1e-6 (tests/test_distributed.py).

Rows travel to the driver, which writes every shard: workers on other machines need no shared
storage for the output, only to read the corpus (and a --checkpoint file) at the same paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from clipsearch.config import OcrConfig
from clipsearch.errors import BuildError
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.loading import Outcome, mark_duplicates, read_and_prepare, shard_of, text_outcome
from clipsearch.ingest.shards import Shard, ShardStore
from clipsearch.ingest.sources import SourceItem
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.onnx_backend import resolve_backend
from clipsearch.model.preprocess import ImagePreparer, PreprocessConfig
from clipsearch.store.ocr_text import ocr_part, with_ocr
from clipsearch.util.progress import progress_bar

ENGINES = ("local", "ray")
RAY_INSTALL_HINT = "pip install -e '.[ray]' (Ray Data)"
EMBEDDED_DIR = "ray-embedded"
"""Where, in the build's work directory, the shards embedded on Ray wait for the duplicates pass."""


def import_ray() -> ModuleType:
    """Ray, with Ray Data; a BuildError naming the extra when it is not installed."""
    try:
        import ray
        import ray.data  # Ray Data is a part of the package of its own: check that it is there
    except ImportError as error:
        raise BuildError(f"--engine ray needs the [ray] extra: {RAY_INSTALL_HINT} ({error})") from error
    return ray


@dataclass(frozen=True)
class ActorPool:
    """How the embedding actors are laid out on the cluster."""

    actors: int
    device: str
    """'cuda' (one GPU per actor) or 'cpu'."""
    gpus_per_actor: float
    cpus_per_actor: float
    threads: int | None = None
    """Intra-op threads of each CPU actor's model (None: the backend's default)."""


def plan_actor_pool(cluster: dict[str, float], device: str | None, actors: int | None) -> ActorPool:
    """One actor per GPU of the cluster (or `actors`), or on a cluster without GPUs `actors` (1)
    actors on the CPU.

    CPU actors reserve at most half of the cluster's CPUs between them: actors that take every CPU
    leave none to the decoding tasks that feed them, and the dataset hangs. Their models still
    run on all of them (`threads`): the model is most of the work, decoding a few per cent of it
    (docs/benchmarks.md), and Ray would otherwise hold each model to its reserved share.
    """
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    if actors is not None and actors < 1:
        raise BuildError(f"--ray-actors must be at least 1, not {actors}")
    wants_gpu = device is not None and device.startswith("cuda")
    if wants_gpu and gpus == 0:
        raise BuildError(f"--device {device} was asked for, but the Ray cluster has no GPU")
    if wants_gpu or (gpus > 0 and device in (None, "", "auto")):
        return ActorPool(actors or gpus, "cuda", 1.0, 1.0)
    count = actors or 1
    return ActorPool(count, "cpu", 0.0, min(1.0, cpus / 2 / count), threads=max(1, int(cpus // count)))


class RayEngine:
    """A connection to Ray for one build: to `address` (or RAY_ADDRESS), else to a Ray instance
    started on this machine, or to the one this process has already started (tests). It is closed
    again on exit if it was opened here."""

    def __init__(self, config: BuildConfig) -> None:
        self.ray = import_ray()
        self.config = config
        self._started_here = not self.ray.is_initialized()
        if self._started_here:
            address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
            self.ray.init(address=address, include_dashboard=False, log_to_driver=config.progress)
        context = self.ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows its own (items/s, ETA)
        try:
            self.pool = plan_actor_pool(self.ray.cluster_resources(), config.device, config.ray_actors)
            self.backend = resolve_backend(config.backend, torch.device(self.pool.device))
            # The driver's own copy of the model, on its CPU (the actors have the GPUs), gives the
            # model's reference, width and preprocessing, and embeds captions for --fuse.
            self.encoder = load_encoder(config.model, config.pretrained, config.checkpoint, "cpu", backend="torch")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def encode(self, modality: Modality, items: Sequence[SourceItem], first_id: int, store: ShardStore,
               on_shard_written: Callable[[Path], None] | None) -> int:
        """Embed `items` into `store`'s shards, as the local engine does; returns how many shards
        were already done (written by an earlier run) when it started."""
        config = self.config
        shard_size = config.batch_size * config.batches_per_shard
        shard_count = -(-len(items) // shard_size)
        built = store.finished(modality, shard_count)
        embedded = ShardStore(store.work, EMBEDDED_DIR)
        (store.work / EMBEDDED_DIR).mkdir(parents=True, exist_ok=True)
        waiting = embedded.written(modality, shard_count)
        todo = [number for number in range(built, shard_count) if number not in waiting]
        if todo:
            self._embed_shards(modality, items, first_id, todo, shard_size, embedded, on_shard_written)
        seen = store.content_hashes(modality, built)
        for number in range(built, shard_count):
            shard = _with_duplicates_marked(embedded.read_one(modality, number), items, first_id, seen,
                                            config.keep_duplicates, self.encoder.embedding_dim)
            path = store.write(modality, number, shard)
            embedded.path(modality, number).unlink()
            if on_shard_written is not None:
                on_shard_written(path)
        return built + len(waiting)

    def _embed_shards(self, modality: Modality, items: Sequence[SourceItem], first_id: int, todo: list[int],
                      shard_size: int, embedded: ShardStore, on_shard_written: Callable[[Path], None] | None) -> None:
        data = self.ray.data
        config, pool = self.config, self.pool
        spans = {number: range(number * shard_size, min((number + 1) * shard_size, len(items))) for number in todo}
        # One block per shard (Ray Data splits its work by blocks), held column by column: a
        # list of dicts per item would take several times the memory at tens of millions of items.
        dataset = data.from_arrow([_rows(modality, items, span) for span in spans.values()])
        if modality is Modality.IMAGE:
            dataset = dataset.map_batches(
                _decode_images, batch_size=config.batch_size, num_cpus=1, batch_format="numpy",
                fn_kwargs={"preprocess": self.encoder.preprocess_config, "blank": _blank_pixels(self.encoder),
                           "max_pixels": config.max_pixels, "ocr": config.ocr})
        dataset = dataset.map_batches(
            _Embedder, batch_size=config.batch_size, batch_format="numpy",
            compute=data.ActorPoolStrategy(size=pool.actors), num_gpus=pool.gpus_per_actor,
            num_cpus=pool.cpus_per_actor,
            fn_constructor_kwargs={"model": config.model, "pretrained": config.pretrained,
                                   "checkpoint": config.checkpoint, "text_language": config.text_language,
                                   "device": pool.device,
                                   "backend": self.backend, "onnx_cache": config.onnx_cache,
                                   "int8_calibration": config.calibration_folder,
                                   "threads": pool.threads, "modality": modality})
        arrived: dict[int, list[dict[str, Any]]] = {number: [] for number in todo}
        total = sum(len(span) for span in spans.values())
        bar = progress_bar(total=total, unit=modality.value, desc=f"encoding {modality.value}s on Ray ({pool.actors} "
                           f"{pool.device} actor{'s' if pool.actors > 1 else ''})", disable=not config.progress,
                           smoothing=0.1, dynamic_ncols=True)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for row in _unbatch(batch):
                number = row["position"] // shard_size
                arrived[number].append(row)
                if len(arrived[number]) == len(spans[number]):
                    path = embedded.write(modality, number, _embedded_shard(arrived.pop(number), first_id,
                                                                            self.encoder.embedding_dim))
                    if on_shard_written is not None:
                        on_shard_written(path)
            bar.update(len(batch["position"]))
        bar.close()
        if arrived:  # Ray Data returns every row or raises: a shard short of rows is a bug, not bad input
            raise BuildError(f"Ray returned too few rows for {modality.value} shards {sorted(arrived)}")


def _rows(modality: Modality, items: Sequence[SourceItem], span: range) -> pa.Table:
    """One shard's items as the stages start from them: what they need, never the metadata (kept here)."""
    if modality is Modality.IMAGE:
        return pa.table({"position": pa.array(span, pa.int64()),
                         "path": [str(items[position].path or "") for position in span],
                         "problem": [items[position].problem or "" for position in span]})
    outcomes = [text_outcome(position, items[position]) for position in span]
    return pa.table({"position": pa.array(span, pa.int64()), "text": [outcome.payload for outcome in outcomes],
                     "hash": [outcome.content_hash for outcome in outcomes],
                     "problem": [outcome.problem or "" for outcome in outcomes]})


def _blank_pixels(encoder: ClipEncoder) -> np.ndarray:
    """What prepare_image makes of an image (its shape and dtype): the stand-in for a row that
    could not be decoded, so that a batch's pixels stack into one array."""
    size = encoder.image_size
    return np.zeros_like(encoder.prepare_image(Image.new("RGB", (size, size))).numpy())


def _decode_images(batch: dict[str, np.ndarray], preprocess: PreprocessConfig, blank: np.ndarray,
                   max_pixels: int, ocr: OcrConfig | None = None) -> dict[str, np.ndarray]:
    """Ray task: read, hash, decode and prepare a batch of image files (and read their text, with
    `ocr`: the text's metadata travels as JSON, "" for none, and is joined to the item's own
    metadata in the driver)."""
    prepare = ImagePreparer(preprocess)
    size = max(preprocess.size)
    pixels, hashes, problems, texts = [], [], [], []
    for position, path, problem in zip(batch["position"], batch["path"], batch["problem"], strict=True):
        item = SourceItem(uri=str(path), path=Path(str(path)) if path else None, problem=str(problem) or None)
        outcome = read_and_prepare(int(position), item, prepare, size, max_pixels, ocr)
        pixels.append(blank if outcome.problem is not None else outcome.payload.numpy())
        hashes.append(outcome.content_hash or "")
        problems.append(outcome.problem or "")
        read = ocr_part(outcome.source.extra)
        texts.append(json.dumps(read, ensure_ascii=False) if read else "")
    return {"position": batch["position"], "pixels": np.stack(pixels), "hash": np.array(hashes, dtype=object),
            "problem": np.array(problems, dtype=object), "ocr": np.array(texts, dtype=object)}


class _Embedder:
    """Ray actor: one model, loaded once, embedding batch after batch of one modality."""

    def __init__(self, model: str, pretrained: str | None, checkpoint: Path | None, text_language: str | None,
                 device: str, backend: str, onnx_cache: Path | None, int8_calibration: Path | None,
                 threads: int | None, modality: Modality) -> None:
        if threads is not None:  # never more than this machine has
            threads = min(threads, len(os.sched_getaffinity(0)))
        self.encoder = load_encoder(model, pretrained, checkpoint, device, backend=backend, onnx_cache=onnx_cache,
                                    threads=threads, text_language=text_language, int8_calibration=int8_calibration)
        self.modality = modality

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        usable = np.array([not problem for problem in batch["problem"]], dtype=bool)
        vectors = np.zeros((len(usable), self.encoder.embedding_dim), dtype=np.float32)
        if usable.any():
            if self.modality is Modality.IMAGE:
                vectors[usable] = self.encoder.encode_images(torch.from_numpy(batch["pixels"][usable]))
            else:
                vectors[usable] = self.encoder.encode_texts([str(text) for text in batch["text"][usable]])
        # The text read from images (a JSON column, "" for none) passes through to the driver.
        read = batch["ocr"] if "ocr" in batch else np.full(len(usable), "", dtype=object)
        return {"position": batch["position"], "hash": batch["hash"], "problem": batch["problem"], "vector": vectors,
                "ocr": read}


def _unbatch(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"position": int(position), "hash": str(content_hash), "problem": str(problem), "vector": vector,
             "ocr": str(read)}
            for position, content_hash, problem, vector, read
            in zip(batch["position"], batch["hash"], batch["problem"], batch["vector"], batch["ocr"], strict=True)]


def _embedded_shard(rows: list[dict[str, Any]], first_id: int, dim: int) -> Shard:
    """A shard as embedded, before duplicates are marked: each row's hash and problem, and the
    vectors of the usable ones."""
    rows = sorted(rows, key=lambda row: row["position"])
    usable = [row for row in rows if not row["problem"]]
    vectors = np.stack([row["vector"] for row in usable]).astype(np.float32) if usable \
        else np.zeros((0, dim), dtype=np.float32)
    return Shard(np.array([first_id + row["position"] for row in usable], dtype=np.int64), vectors,
                 [{"position": row["position"], "hash": row["hash"] or None, "problem": row["problem"] or None,
                   "ocr": row.get("ocr") or None} for row in rows])


def _with_read_text(item: SourceItem, read: str | None) -> SourceItem:
    """`item` with the text read from its image (OCR metadata as JSON), as the local engine gives it."""
    return replace(item, extra=with_ocr(item.extra, json.loads(read))) if read else item


def _with_duplicates_marked(embedded: Shard, items: Sequence[SourceItem], first_id: int, seen: dict[str, int],
                            keep_duplicates: bool, dim: int) -> Shard:
    """The build's shard for an embedded one: duplicates marked in position order, as the local
    engine marks them, and each item's metadata joined back."""
    vectors = iter(embedded.vectors)
    outcomes = [Outcome(record["position"], _with_read_text(items[record["position"]], record.get("ocr")),
                        content_hash=record["hash"], payload=None if record["problem"] else next(vectors),
                        problem=record["problem"])
                for record in embedded.records]
    mark_duplicates(outcomes, seen, first_id, keep_duplicates)
    return shard_of(outcomes, first_id, dim)

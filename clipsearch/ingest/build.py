"""Build a bundle: read the corpora, encode them in batches into shards, then write the bundle.

A build that dies (even kill -9) and is started again with the same settings continues after
its last finished shard (clipsearch.ingest.shards) and ends with the same bundle as an uninterrupted
one: batches never cross shard boundaries, so every item is encoded in exactly the same batch
either way.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from clipsearch.errors import ImageDecodeError, IndexSettingsInvalid, NoSources
from clipsearch.index import faiss_index, ondisk
from clipsearch.index.spec import (
    RECALL_QUERIES,
    default_factory,
)
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.distributed import ENGINES, RayEngine
from clipsearch.ingest.fingerprint import corpus_fingerprint, resume_fingerprint
from clipsearch.ingest.fusing import fused_content
from clipsearch.ingest.loading import (
    LoadedBatch,
    Outcome,
    encode_batch,
    encode_video,
    image_batches,
    mark_duplicates,
    shard_of,
    text_batches,
    video_batches,
    video_shard_of,
)
from clipsearch.ingest.shards import ShardStore
from clipsearch.ingest.sounds import SoundBuild, encode_sounds_into_shards
from clipsearch.ingest.sources import (
    SourceItem,
    read_audio_source,
    read_image_source,
    read_text_source,
    read_video_source,
)
from clipsearch.modality import Modality, recall_queries_for
from clipsearch.model.audio import AudioEncoder, load_audio_encoder
from clipsearch.model.captions import Captioner, load_captioner
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.model.ocr import describe, load_reader
from clipsearch.store import segments
from clipsearch.store.bundle import ModalityContent, on_disk_name, write_bundle
from clipsearch.store.items import Item
from clipsearch.store.ocr_text import OCR_TEXT, ocr_problem
from clipsearch.util.images import read_image_file
from clipsearch.util.progress import progress_bar
from clipsearch.util.storage import storage_errors

BUILD_OUTCOME = "no bundle was written, and the shards finished so far are kept: a rerun resumes from them"

log = logging.getLogger(__name__)


COUNTED = {Modality.AUDIO.value: "sounds"}
"""What a build's summary calls its items of a modality, where it is not the modality's name and an s."""


@dataclass
class BuildSummary:
    out: Path
    indexed: dict[str, int]
    skipped: int
    duplicates: int
    elapsed_s: float
    resumed_shards: int
    report: dict[str, Any] = field(repr=False, default_factory=dict)
    captioned: int = 0
    """Images given a generated caption (in this run; resumed shards not counted)."""
    text_read: int = 0
    """Images in which OCR found text (with --ocr)."""

    @property
    def items_per_s(self) -> float:
        return sum(self.indexed.values()) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        counts = ", ".join(f"{count} {COUNTED.get(modality, modality + 's')}"
                           for modality, count in self.indexed.items())
        resumed = f", resumed after {self.resumed_shards} finished shards" if self.resumed_shards else ""
        captioned = f", captioned {self.captioned}" if self.captioned else ""
        read = f", text found in {self.text_read} images ({len(self.report['text_unread'])} could not be read)" \
            if "text_unread" in self.report else ""
        return (f"indexed {counts or 'nothing'}; skipped {self.skipped}, duplicates {self.duplicates}{captioned}"
                f"{read}; "
                f"{self.elapsed_s:.1f} s, {self.items_per_s:.1f} items/s{resumed} → {self.out}")


def build(config: BuildConfig, on_shard_written: Callable[[Path], None] | None = None) -> BuildSummary:
    """Read, encode and write: the whole build, resumable shard by shard."""
    started = time.perf_counter()
    sources = read_sources(config)
    if not sources:
        raise NoSources("give images, texts, videos, sounds or several of them to index")
    _check_fusion(config, len(sources.get(Modality.IMAGE, [])), len(sources.get(Modality.VIDEO, [])))
    if config.engine not in ENGINES:
        raise IndexSettingsInvalid(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
    if config.engine == "ray":
        if Modality.VIDEO in sources or Modality.AUDIO in sources:
            raise IndexSettingsInvalid("videos and sounds are embedded by the local engine only: leave out "
                                       "--engine ray")
        return _build_on_ray(config, sources, on_shard_written, started)
    encoder = load_encoder(config.model, config.pretrained, config.checkpoint, config.device, backend=config.backend,
                           onnx_cache=config.onnx_cache, text_language=config.text_language,
                           int8_calibration=config.calibration_folder)
    captioner = load_captioner(config.caption) if config.caption is not None and Modality.IMAGE in sources else None
    # The audio model's name is the whole of its identity (a repository or a directory): recorded in the
    # manifest, and the resume fingerprint's settings.
    audio = load_audio_encoder(config.sound.model, config.device) if Modality.AUDIO in sources else None
    if config.ocr is not None:
        # Fails now, before any work, without the [ocr] extra or with a bad model file. Not kept: the
        # loader processes forked from this one each load their own (ONNX Runtime's sessions are
        # not safe to use across a fork).
        load_reader(config.ocr).close()
    with storage_errors(config.out, "the build", BUILD_OUTCOME):
        store = ShardStore.open(config.out, resume_fingerprint(config, encoder.ref, encoder.device.type, sources,
                                                               backend=encoder.backend))
        first_id = _first_ids(sources)
        counts = [_encode_into_shards(config, encoder, modality, items, first_id[modality], store, on_shard_written,
                                      captioner if modality is Modality.IMAGE else None)
                  for modality, items in sources.items() if not modality.own_space]
        if audio is not None:
            sounds = SoundBuild(audio, config.sound, config.batch_size, config.batch_size * config.batches_per_shard,
                                config.workers, config.keep_duplicates, config.progress)
            counts.append((encode_sounds_into_shards(sounds, sources[Modality.AUDIO], first_id[Modality.AUDIO], store,
                                                     on_shard_written), 0))
        summary = _finish(config, encoder, sources, store, started, audio)
    summary.resumed_shards = sum(resumed for resumed, _ in counts)
    summary.captioned = sum(captioned for _, captioned in counts)
    store.remove()
    return summary


def _build_on_ray(config: BuildConfig, sources: dict[Modality, list[SourceItem]],
                  on_shard_written: Callable[[Path], None] | None, started: float) -> BuildSummary:
    """The build with its embedding on Ray (clipsearch.ingest.distributed): the same shards, then the same bundle."""
    if config.caption is not None:
        raise IndexSettingsInvalid("--caption-model runs with the local engine only: caption with a local build, "
                                   "or leave it out")
    if config.ocr is not None:
        load_reader(config.ocr).close()  # fails now, as the local build does, before Ray starts
    with RayEngine(config) as engine:
        fingerprint = resume_fingerprint(config, engine.encoder.ref, engine.pool.device, sources,
                                         backend=engine.backend) | {"engine": "ray"}
        with storage_errors(config.out, "the build", BUILD_OUTCOME):
            store = ShardStore.open(config.out, fingerprint)
            first_id = _first_ids(sources)
            resumed = sum(engine.encode(modality, items, first_id[modality], store, on_shard_written)
                          for modality, items in sources.items())
    with storage_errors(config.out, "the build", BUILD_OUTCOME):
        summary = _finish(config, engine.encoder, sources, store, started)
    summary.resumed_shards = resumed
    store.remove()
    return summary


def _first_ids(sources: dict[Modality, list[SourceItem]]) -> dict[Modality, int]:
    """Image ids come first, then text ids, then video ids, then sounds', by position in their listing."""
    images, texts = len(sources.get(Modality.IMAGE, [])), len(sources.get(Modality.TEXT, []))
    videos = len(sources.get(Modality.VIDEO, []))
    return {Modality.IMAGE: 0, Modality.TEXT: images, Modality.VIDEO: images + texts,
            Modality.AUDIO: images + texts + videos}


def _check_fusion(config: BuildConfig, images: int, videos: int) -> None:
    """Refuse --fuse where it cannot work, before anything is embedded."""
    if config.fuse is None:
        return
    if images == 0 and videos == 0:
        raise IndexSettingsInvalid("--fuse weighs images with their captions and read text, and videos with "
                                   "their captions: give --images or --videos")
    if not config.fuse.text_parts:
        raise IndexSettingsInvalid("--fuse weighs an image with its texts: name caption, ocr or both "
                                   "(e.g. image=0.6,caption=0.2,ocr=0.2)")
    if "ocr" in config.fuse.text_parts and config.ocr is None:
        raise IndexSettingsInvalid("--fuse weighs ocr, the text read in each image: add --ocr to read it")
    if images and ondisk.is_on_disk_factory(_factory_for(config, images)):
        raise IndexSettingsInvalid("--fuse needs the image index in memory, and an IVF-PQ index is built on disk: "
                                   "leave out --fuse, or choose an IVF…,Flat --index-factory")


def _factory_for(config: BuildConfig, count: int, dim: int = 512) -> str:
    return config.index_factory or default_factory(count, config.flat_threshold,
                                                               config.on_disk_threshold, dim)


def read_sources(config: BuildConfig) -> dict[Modality, list[SourceItem]]:
    sources: dict[Modality, list[SourceItem]] = {}
    if config.images is not None:
        sources[Modality.IMAGE] = read_image_source(config.images, config.columns)
    if config.texts is not None:
        sources[Modality.TEXT] = read_text_source(config.texts, config.columns)
    if config.videos is not None:
        sources[Modality.VIDEO] = read_video_source(config.videos)
    if config.audio is not None:
        sources[Modality.AUDIO] = read_audio_source(config.audio)
    if config.indexes_video_sound:
        # Each video again, for its sound track: after the sound files, so that their ids do not move.
        sources[Modality.AUDIO] = sources.get(Modality.AUDIO, []) + [
            replace(video, sound_of_video=True) for video in sources[Modality.VIDEO] if video.problem is None]
    return sources


def is_up_to_date(config: BuildConfig, recorded_fingerprint: str | None) -> bool:
    """Whether a bundle recorded with `recorded_fingerprint` was built from these settings and files."""
    return recorded_fingerprint == corpus_fingerprint(config, read_sources(config))


def _encode_into_shards(config: BuildConfig, encoder: ClipEncoder, modality: Modality, items: list[SourceItem],
                        first_id: int, store: ShardStore, on_shard_written: Callable[[Path], None] | None,
                        captioner: Captioner | None = None) -> tuple[int, int]:
    """Encode (and caption) `items` from the first unfinished shard on.

    Returns how many shards were already done, and how many images were captioned.
    """
    shard_size = config.batch_size * config.batches_per_shard
    done = store.finished(modality, -(-len(items) // shard_size))
    seen = store.content_hashes(modality, done)
    start = min(done * shard_size, len(items))
    bar = progress_bar(total=len(items), initial=start, unit=modality.value, desc=f"encoding {modality.value}s",
                       disable=not config.progress, smoothing=0.1, dynamic_ncols=True)
    if modality is Modality.VIDEO:
        batches = video_batches(items, encoder, start, config.workers, config.video, config.batch_size,
                                lambda position: position % shard_size == 0)
    elif modality is Modality.IMAGE:
        batches = image_batches(items, encoder, start, config.batch_size, config.workers, config.max_pixels,
                                config.ocr)
    else:
        batches = text_batches(items, start, config.batch_size)
    shard_of_outcomes = video_shard_of if modality is Modality.VIDEO else shard_of
    shard: list[Outcome] = []
    captioned = 0
    for batch in batches:
        mark_duplicates(batch.outcomes, seen, first_id, config.keep_duplicates)
        if modality is Modality.VIDEO:
            encode_video(encoder, batch, config.batch_size)
        else:
            encode_batch(encoder, batch)
        if captioner is not None:
            captioned += _caption_missing(captioner, encoder, batch, config.max_pixels)
        shard.extend(batch.outcomes)
        bar.update(len(batch.outcomes))
        if len(shard) == shard_size or batch.outcomes[-1].position == len(items) - 1:
            path = store.write(modality, shard[0].position // shard_size,
                               shard_of_outcomes(shard, first_id, encoder.embedding_dim))
            shard = []
            if on_shard_written is not None:
                on_shard_written(path)
    bar.close()
    return done, captioned


def _caption_missing(captioner: Captioner, encoder: ClipEncoder, batch: LoadedBatch, max_pixels: int) -> int:
    """Give every usable image of the batch that has no caption a generated one; returns how many.

    The generated caption is the item's caption, and its metadata says so (`caption_generated`,
    `caption_model`). The batch's pixels are reused when both models prepare images alike;
    otherwise the files are read again for the caption model.
    """
    wanting = [(row, outcome) for row, outcome in enumerate(batch.decoded)
               if outcome.problem is None and not (outcome.source.text or "").strip()]
    if not wanting or batch.pixels is None:
        return 0
    same_input = captioner.preprocess_config == encoder.preprocess_config
    rows: list[tuple[Outcome, torch.Tensor]] = []
    for row, outcome in wanting:
        if same_input:
            rows.append((outcome, batch.pixels[row]))
        elif outcome.source.path is not None:
            try:
                rows.append((outcome, captioner.prepare_image(read_image_file(outcome.source.path, max_pixels))))
            except (OSError, ImageDecodeError):  # changed since it was read: indexed without a caption
                log.warning("could not read %s again to caption it", outcome.source.uri)
    size = captioner.config.batch_size
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        for (outcome, _), caption in zip(chunk, captioner.caption(torch.stack([pixels for _, pixels in chunk])),
                                         strict=True):
            outcome.source = replace(outcome.source, text=caption, extra={
                **outcome.source.extra, "caption_generated": True, "caption_model": captioner.ref.describe()})
    return len(rows)


def _finish(config: BuildConfig, encoder: ClipEncoder, sources: dict[Modality, list[SourceItem]],
            store: ShardStore, started: float, audio: AudioEncoder | None = None) -> BuildSummary:
    """Gather the shards, build one index per modality and write the bundle."""
    # An index built on disk reads its vectors from the shards as it goes; only the first few,
    # the other modality's recall queries, are gathered here.
    dims = {modality: audio.embedding_dim if modality.own_space and audio is not None else encoder.embedding_dim
            for modality in sources}
    factories = {modality: _factory_for(config, sum(len(part) for part in store.read_ids(modality)),
                                        dims[modality]) for modality in sources}
    on_disk = {modality for modality, factory in factories.items() if ondisk.is_on_disk_factory(factory)}
    vectors: dict[Modality, np.ndarray] = {}
    ids: dict[Modality, np.ndarray] = {}
    items: list[Item] = []
    skipped: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    for modality in sources:
        id_parts, vector_parts = [np.zeros(0, np.int64)], [np.zeros((0, dims[modality]), np.float32)]
        for shard in store.read(modality):
            id_parts.append(shard.ids)
            if modality not in on_disk or sum(map(len, vector_parts)) < RECALL_QUERIES:
                vector_parts.append(shard.vectors)
            for record in shard.records:
                if record["problem"] is None:
                    items.append(Item(id=record["id"], modality=modality, uri=record["uri"], text=record["text"],
                                      extra=record["extra"], content_hash=record["hash"]))
                else:
                    entry = {"modality": modality.value, "uri": record["uri"], "reason": record["problem"]}
                    (skipped if record["duplicate_of"] is None else duplicates).append(entry)
        ids[modality], vectors[modality] = np.concatenate(id_parts), np.concatenate(vector_parts)
    content = {}
    use_gpu = encoder.device.type == "cuda" and faiss_index.gpu_available()
    for modality in sources:
        queried_by = recall_queries_for(modality, (other for other in sources if len(vectors[other])))
        others = [] if queried_by is None else [vectors[queried_by]]
        factory = factories[modality]
        queries_label = None if queried_by is None else f"{queried_by.value} (cross-modal)"
        if modality in on_disk:
            content[modality] = _on_disk_content(config, store, modality, len(ids[modality]), dims[modality],
                                                 factory, others[0] if others else None, queries_label)
            continue
        index, spec = faiss_index.build_index(
            vectors[modality], ids[modality], factory, recall_queries=others[0] if others else None,
            queries_label=queries_label, use_gpu=use_gpu)
        content[modality] = ModalityContent(index=index, spec=spec)
    report: dict[str, Any] = {"skipped": skipped, "duplicates": duplicates}
    ocr_record = None
    if config.ocr is not None:
        # Still indexed, by their pictures: the report says which images kept their text to themselves.
        report["text_unread"] = [{"uri": item.uri, "reason": problem} for item in items
                                 if (problem := ocr_problem(item.extra)) is not None]
        ocr_record = config.ocr.as_record(describe(config.ocr))
    fused = None
    if config.fuse is not None:
        if Modality.VIDEO in content and not content[Modality.VIDEO].spec.exact:
            log.warning("the videos' index is approximate (%s): videos are searched by their segments alone, "
                        "not fused with their captions (fusion needs an exact video index)",
                        content[Modality.VIDEO].spec.factory)
        fused = fused_content(config.fuse, encoder, items, ids.get(Modality.IMAGE, np.zeros(0, np.int64)),
                              vectors.get(Modality.IMAGE, np.zeros((0, encoder.embedding_dim), np.float32)),
                              content.get(Modality.IMAGE), vectors.get(Modality.TEXT), config, use_gpu)
    write_bundle(config.out, encoder.ref, encoder.embedding_dim, content, items, report, _versions(),
                 corpus_fingerprint(config, sources), discard_live_changes=config.discard_live_changes,
                 keyword_fields=config.keyword_fields, fused=fused, ocr=ocr_record,
                 video=config.video.as_record() if Modality.VIDEO in sources else None,
                 audio=None if audio is None else
                 config.sound.as_record(audio.window_s, audio.sampling_rate) | {"embedding_dim": audio.embedding_dim})
    indexed = {modality.value: segments.count_items(ids[modality]) if modality.timed else len(ids[modality])
               for modality in sources}
    return BuildSummary(out=config.out, indexed=indexed,
                        skipped=len(skipped), duplicates=len(duplicates),
                        elapsed_s=time.perf_counter() - started, resumed_shards=0, report=report,
                        text_read=sum(1 for item in items if item.extra.get(OCR_TEXT)))


def _on_disk_content(config: BuildConfig, store: ShardStore, modality: Modality, count: int, dim: int,
                     factory: str, recall_queries: np.ndarray | None, queries_label: str | None) -> ModalityContent:
    """An IVF-PQ index on disk (clipsearch.index.ondisk) of the `count` vectors in `modality`'s shards,
    read from them shard by shard; built in the shard store's work directory, so that a build
    killed while filling its lists resumes there."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return ((shard.ids, shard.vectors) for shard in store.read(modality))

    files, spec = ondisk.build_on_disk(chunks, count, dim, factory,
                                       store.work / f"ondisk-{modality.value}", on_disk_name(modality),
                                       recall_queries, queries_label, config.rerank, config.progress)
    return ModalityContent(index=files.index, spec=spec, on_disk=files)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "faiss": faiss.__version__}
    for package in ("clipsearch", "torch", "open_clip_torch", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions

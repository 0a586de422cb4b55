"""Retrieval quality on a paired corpus: CLIP_benchmark's recall@k both ways, and mean rank.

Every caption is scored against every image (cosine of unit vectors):

- text→image R@k: the share of captions whose image is among the k best images;
- image→text R@k: the share of images with at least one of their captions among the k best captions;
- mean rank (1 is best): a caption's image's rank, and an image's best caption's rank, averaged.

This is exactly CLIP_benchmark's zero-shot retrieval metric, except for ties: an item scoring
exactly as high as the right one is counted after it here, where CLIP_benchmark leaves the order
to torch.topk. Scores are computed block by block, so memory grows with one block of scores
(SCORE_BUDGET), never with images × captions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsearch.client import ClipSearchClient
from clipsearch.errors import SourceError
from clipsearch.ingest.loading import image_batches
from clipsearch.ingest.sources import Columns, SourceItem, read_image_source
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.util.progress import progress_bar

RECALL_AT = (1, 5, 10)
SCORE_BUDGET = 1 << 25
"""Most caption×image scores held at once (128 MB of float32)."""


@dataclass(frozen=True)
class PairedCorpus:
    """Images, their captions (several per image allowed), and what could not be used."""

    images: list[SourceItem]
    captions: list[str]
    caption_image: np.ndarray
    """int64 (len(captions),): the position in `images` of each caption's image."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(uri, reason) of each image left out."""

    def without(self, unusable: dict[int, str]) -> PairedCorpus:
        """The corpus less the images at these positions (and their captions), which are reported skipped."""
        if not unusable:
            return self
        keep = [position for position in range(len(self.images)) if position not in unusable]
        new_position = np.full(len(self.images), -1, dtype=np.int64)
        new_position[keep] = np.arange(len(keep))
        kept_captions = new_position[self.caption_image] >= 0
        return PairedCorpus(images=[self.images[position] for position in keep],
                            captions=[caption for caption, kept in zip(self.captions, kept_captions, strict=True)
                                      if kept],
                            caption_image=new_position[self.caption_image[kept_captions]],
                            skipped=self.skipped + [(self.images[position].uri, reason)
                                                    for position, reason in sorted(unusable.items())])


def read_pairs(source: Path, columns: Columns | None = None) -> PairedCorpus:
    """A folder whose `name.txt` beside each image holds one caption per line, or a CSV, JSONL or Parquet
    manifest with an image and a caption column, one row per pair (an image may have many rows)."""
    one_caption_per_line = source.is_dir()
    position_of: dict[str, int] = {}
    images: list[SourceItem] = []
    captions: list[str] = []
    caption_image: list[int] = []
    skipped: list[tuple[str, str]] = []
    for item in read_image_source(source, columns or Columns()):
        if item.problem is not None:
            skipped.append((item.uri, item.problem))
            continue
        texts = [line.strip() for line in (item.text or "").splitlines()] if one_caption_per_line \
            else [item.text or ""]
        texts = [text for text in texts if text]
        if not texts:
            if item.uri not in position_of:
                skipped.append((item.uri, "no caption"))
            continue
        if item.uri not in position_of:
            position_of[item.uri] = len(images)
            images.append(item)
        captions.extend(texts)
        caption_image.extend([position_of[item.uri]] * len(texts))
    # An image listed once without a caption and again with one is not skipped after all.
    skipped = [(uri, reason) for uri, reason in skipped if uri not in position_of]
    if not images:
        raise SourceError(f"{source} holds no image with a caption", "pairs")
    return PairedCorpus(images, captions, np.array(caption_image, dtype=np.int64), skipped)


@dataclass(frozen=True)
class RetrievalScores:
    """The metric's figures for one model on one corpus."""

    images: int
    captions: int
    text_to_image: dict[int, float]
    """R@k of text→image, by k."""
    image_to_text: dict[int, float]
    """R@k of image→text, by k (empty when a server was evaluated that holds no texts)."""
    text_to_image_mean_rank: float | None
    """None when only the top max(RECALL_AT) were seen (through a server)."""
    image_to_text_mean_rank: float | None

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for direction in ("text_to_image", "image_to_text"):
            record[direction] = {f"R@{k}": value for k, value in record[direction].items()}
        return record

    @classmethod
    def of_ranks(cls, text_ranks: np.ndarray, image_ranks: np.ndarray | None, images: int | None = None,
                 complete: bool = True) -> RetrievalScores:
        """From each caption's image's 0-based rank and each image's best caption's 0-based rank (None: not
        measured). `complete` False: ranks past the top max(RECALL_AT) are unknown, so no mean rank."""
        return cls(images=images if images is not None else len(image_ranks) if image_ranks is not None else 0,
                   captions=len(text_ranks),
                   text_to_image={k: float(np.mean(text_ranks < k)) for k in RECALL_AT},
                   image_to_text={k: float(np.mean(image_ranks < k)) for k in RECALL_AT}
                   if image_ranks is not None else {},
                   text_to_image_mean_rank=float(np.mean(text_ranks + 1)) if complete else None,
                   image_to_text_mean_rank=float(np.mean(image_ranks + 1))
                   if complete and image_ranks is not None else None)


def retrieval_ranks(image_vectors: np.ndarray, caption_vectors: np.ndarray, caption_image: np.ndarray,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The 0-based rank of each caption's image among all images, and of each image's best caption among
    all captions (the number of items that score strictly higher), in blocks of SCORE_BUDGET scores."""
    images = torch.from_numpy(np.ascontiguousarray(image_vectors, dtype=np.float32)).to(device)
    captions = torch.from_numpy(np.ascontiguousarray(caption_vectors, dtype=np.float32)).to(device)
    owner = torch.from_numpy(np.ascontiguousarray(caption_image, dtype=np.int64)).to(device)
    with torch.inference_mode():
        text_ranks = torch.cat([_caption_ranks(block, images, owner[start:start + len(block)])
                                for start, block in _blocks(captions, len(images))])
        image_ranks = torch.cat([_image_ranks(block, captions, owner - start)
                                 for start, block in _blocks(images, len(captions))])
    return text_ranks.cpu().numpy(), image_ranks.cpu().numpy()


def _caption_ranks(captions: torch.Tensor, images: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    # The right score is read from the same product as the others: recomputed another way it can
    # differ in the last bit, and the right image would then outrank itself.
    scores = captions @ images.T
    positive = scores.gather(1, owner[:, None])
    return (scores > positive).sum(dim=1)


def _image_ranks(images: torch.Tensor, captions: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Ranks of the best caption of each of `images`; `owner` holds caption owners relative to this block."""
    scores = images @ captions.T
    own = ((owner >= 0) & (owner < len(images))).nonzero().flatten()
    best = torch.full((len(images),), -torch.inf, device=scores.device)
    best.scatter_reduce_(0, owner[own], scores[owner[own], own], reduce="amax")
    return (scores > best[:, None]).sum(dim=1)


def _blocks(rows: torch.Tensor, columns: int) -> Iterator[tuple[int, torch.Tensor]]:
    size = max(1, SCORE_BUDGET // max(1, columns))
    for start in range(0, len(rows), size):
        yield start, rows[start:start + size]


def evaluate(corpus: PairedCorpus, encode_images: Callable[[Sequence[SourceItem]], tuple[np.ndarray, dict[int, str]]],
             encode_texts: Callable[[Sequence[str]], np.ndarray],
             device: torch.device | str = "cpu") -> tuple[RetrievalScores, PairedCorpus]:
    """Embed the corpus and score it. `encode_images` returns the vectors of the images it could decode
    (in order) and, by position, the reason for each one it could not; those images and their captions
    are left out. Returns the scores and the corpus that was scored."""
    image_vectors, unusable = encode_images(corpus.images)
    scored = corpus.without(unusable)
    if not scored.images:
        raise SourceError("no image of the corpus could be decoded", "pairs")
    caption_vectors = encode_texts(scored.captions)
    text_ranks, image_ranks = retrieval_ranks(image_vectors, caption_vectors, scored.caption_image, device)
    return RetrievalScores.of_ranks(text_ranks, image_ranks), scored


def encoder_functions(encoder: ClipEncoder, batch_size: int, workers: int, max_pixels: int, progress: bool = True
                      ) -> tuple[Callable[[Sequence[SourceItem]], tuple[np.ndarray, dict[int, str]]],
                                 Callable[[Sequence[str]], np.ndarray]]:
    """evaluate()'s two encode functions for `encoder`: images decoded in `workers` processes as the
    build decodes them, texts in batches, each with a progress bar (items/s, ETA)."""

    def encode_images(items: Sequence[SourceItem]) -> tuple[np.ndarray, dict[int, str]]:
        vectors: list[np.ndarray] = []
        unusable: dict[int, str] = {}
        with progress_bar(total=len(items), unit="image", desc="encoding images", disable=not progress,
                  dynamic_ncols=True) as bar:
            for batch in image_batches(items, encoder, 0, batch_size, workers, max_pixels):
                if batch.pixels is not None:
                    vectors.append(encoder.encode_images(batch.pixels))
                unusable.update({outcome.position: outcome.problem for outcome in batch.outcomes
                                 if outcome.problem is not None})
                bar.update(len(batch.outcomes))
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, encoder.embedding_dim), dtype=np.float32)
        return stacked, unusable

    def encode_texts(texts: Sequence[str]) -> np.ndarray:
        return encoder.encode_texts_in_batches(texts, batch_size, progress, unit="caption")

    return encode_images, encode_texts


def search_ranks(corpus: PairedCorpus, search: Callable[[str, int], list[str]], progress: bool = True,
                 description: str = "text → image by search") -> np.ndarray:
    """Each caption's image's 0-based rank in `search(caption, depth)` (the uris of the image results,
    best first), max(RECALL_AT) standing for "not in the top max(RECALL_AT)". A hit is the caption's
    image when its uri is the image's, as a bundle built from the same files records it."""
    depth = max(RECALL_AT)
    ranks = []
    for caption, owner in progress_bar(zip(corpus.captions, corpus.caption_image, strict=True),
                                       total=len(corpus.captions), unit="caption", desc=description,
                                       disable=not progress):
        wanted = corpus.images[owner].uri
        ranks.append(next((rank for rank, uri in enumerate(search(caption, depth)) if uri == wanted), depth))
    return np.array(ranks)


def served_ranks(corpus: PairedCorpus, client: ClipSearchClient, progress: bool = True,
                 search_options: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The ranks as a running server gives them, through its search endpoints; max(RECALL_AT) stands
    for "not in the top max(RECALL_AT)".

    Text→image matches a hit to the caption's image by its uri (the server's bundle must have been
    built from the same files), searching with `search_options` (mode, fusion… as
    ClipSearchClient.search_text takes them). Image→text is measured only when the server holds
    texts and no options are given, and matches a hit by its text, one of the image's captions.
    """
    depth = max(RECALL_AT)
    options = search_options or {}
    text_ranks = search_ranks(corpus, lambda caption, k: [hit.uri for hit in client.search_text(
        caption, target=Modality.IMAGE, k=k, **options).results], progress, "text → image via the server")
    if options or not client.info()["counts"].get(Modality.TEXT.value):
        return text_ranks, None
    captions_of: dict[int, set[str]] = {}
    for caption, owner in zip(corpus.captions, corpus.caption_image, strict=True):
        captions_of.setdefault(int(owner), set()).add(caption)
    image_ranks = []
    for position, item in enumerate(progress_bar(corpus.images, unit="image", desc="image → text via the server",
                                                 disable=not progress)):
        assert item.path is not None  # read_pairs keeps only images with a file
        hits = client.search_image(item.path, target=Modality.TEXT, k=depth).results
        image_ranks.append(next((rank for rank, hit in enumerate(hits) if hit.text in captions_of[position]), depth))
    return text_ranks, np.array(image_ranks)

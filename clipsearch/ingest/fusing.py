"""What a fused build stores besides its indices (`--fuse`, clipsearch.index.fusion): each image's
texts' vectors (its caption, the text read in it) and each video's caption's, and beside an
approximate image index the same kind of index over the images' fused rows."""

from __future__ import annotations

import numpy as np

from clipsearch.index import faiss_index
from clipsearch.index.fusion import FUSED_MODALITIES, Fusion, fused_rows_by_id
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.ingest.config import BuildConfig
from clipsearch.model.encoder import ClipEncoder
from clipsearch.store.bundle import FusedContent, ModalityContent
from clipsearch.store.fused_texts import part_text
from clipsearch.store.items import Item


def fused_content(fusion: Fusion, encoder: ClipEncoder, items: list[Item], image_ids: np.ndarray,
                  image_vectors: np.ndarray, image_index: ModalityContent | None, texts: np.ndarray | None,
                  config: BuildConfig, use_gpu: bool) -> FusedContent:
    """What a fused bundle stores besides its indices: the vectors of each text part the fusion
    names (captions, read text; videos' captions too), and for an approximate image index the same
    kind of index over the images' fused rows (tuned, as the image index is, with the texts as
    queries under the default weights). `image_index` is None in a bundle of videos without images."""
    held = {part: _text_vectors(encoder, items, part, config) for part in fusion.text_parts}
    stored = {part: faiss_index.build_index(vectors, ids, EXACT_FACTORY)[0] for part, (ids, vectors) in held.items()}
    if image_index is None or image_index.spec.exact:
        return FusedContent(fusion, stored)
    rows = fused_rows_by_id(fusion.text_parts, image_ids, image_vectors, held)
    queries = None if texts is None or not len(texts) else fusion.expand(texts)
    index, spec = faiss_index.build_index(rows, image_ids, image_index.spec.factory, queries,
                                          "text (cross-modal, default weights)" if queries is not None else None,
                                          use_gpu=use_gpu)
    return FusedContent(fusion, stored, ModalityContent(index, spec))


def _text_vectors(encoder: ClipEncoder, items: list[Item], part: str,
                  config: BuildConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ids (ascending) and text vectors of the image and video items that have a text of fusion part
    `part`."""
    found = sorted((item.id, text) for item in items if item.modality in FUSED_MODALITIES
                   and (text := part_text(part, item.text, item.extra)))
    vectors = encoder.encode_texts_in_batches([text for _, text in found], config.batch_size, config.progress,
                                              unit="caption" if part == "caption" else "read text")
    return np.array([item_id for item_id, _ in found], dtype=np.int64), vectors

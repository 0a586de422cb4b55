"""Queries to unit vectors: texts, uploaded images and weighted mixes, through the pipeline's batchers.

Every part of a query is submitted before any is waited on, so the parts of one query (and the
items of one write) are embedded side by side. Waits are bounded by the limits' encode timeout:
an overloaded model answers ServiceBusy, never an endless wait.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from clipsearch.config import QueryLimits
from clipsearch.errors import ServiceBusy
from clipsearch.index.fusion import Fusion
from clipsearch.index.searchers import Allowed
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.pipeline import Embedded, Pending, QueryPipeline
from clipsearch.search.query import (
    Encoding,
    ImageTerm,
    QueryVector,
    Term,
    TextTerm,
    check_terms,
    check_text,
    weighted_sum,
)
from clipsearch.search.uploads import UploadDecoder

Result = TypeVar("Result")


class QueryEmbedder:
    """Embeds queries with the pipeline's batchers; thread-safe."""

    def __init__(self, encoder: ClipEncoder, pipeline: QueryPipeline, uploads: UploadDecoder,
                 limits: QueryLimits) -> None:
        self.encoder, self.pipeline, self.uploads, self.limits = encoder, pipeline, uploads, limits

    def text(self, text: str, field: str = "text") -> QueryVector:
        return self.text_vector(self.wait(self.submit_text(text, field)), text, field)

    def image(self, data: bytes, field: str = "data") -> QueryVector:
        return self.image_vector(self.wait(self.submit_image(self.uploads.decode(data, field))))

    def texts(self, texts: Sequence[str], fields: Sequence[str], background: bool = False) -> list[np.ndarray]:
        """Unit vectors (float32 (d,)) of several texts; `background` ones (writes) queue behind every query."""
        futures = [self.submit_text(text, field, background=background)
                   for text, field in zip(texts, fields, strict=True)]
        return [self.wait(future).vector for future in futures]

    def images(self, images: Sequence[bytes], fields: Sequence[str], background: bool = False) -> list[np.ndarray]:
        """Unit vectors of several image files, decoded and embedded side by side (`background` as texts)."""
        decodings = [self.uploads.submit(data) for data in images]
        futures = [self.submit_image(self.uploads.result(decoding, field), background=background)
                   for decoding, field in zip(decodings, fields, strict=True)]
        return [self.wait(future).vector for future in futures]

    def frames(self, frames: Sequence[Image.Image], background: bool = False) -> np.ndarray:
        """Unit vectors (float32 (m, d)) of decoded pictures (a video's segments' frames), prepared for the
        model and embedded side by side (`background` as texts)."""
        futures = [self.submit_image(self.encoder.prepare_image(frame), background=background) for frame in frames]
        return np.stack([self.wait(future).vector for future in futures])

    def terms(self, terms: Sequence[Term], field: str, stored_vector: Callable[[int, str], np.ndarray]) -> QueryVector:
        """The weighted sum of the terms' unit embeddings (an item's is `stored_vector(id, field)`),
        renormalised to unit length."""
        check_terms(terms, field, self.limits)
        live = [(number, term) for number, term in enumerate(terms) if term.weight != 0]
        texts = {number: self.submit_text(term.text, f"{field}[{number}].text")
                 for number, term in live if isinstance(term, TextTerm)}
        decodings = {number: self.uploads.submit(term.data) for number, term in live if isinstance(term, ImageTerm)}
        images = {number: self.submit_image(self.uploads.result(decoding, f"{field}[{number}].data"))
                  for number, decoding in decodings.items()}
        parts = []
        for number, term in live:
            name = f"{field}[{number}]"
            if isinstance(term, TextTerm):
                part = self.text_vector(self.wait(texts[number]), term.text, f"{name}.text")
            elif isinstance(term, ImageTerm):
                part = self.image_vector(self.wait(images[number]))
            else:
                part = QueryVector(stored_vector(term.item_id, f"{name}.item_id"))
            parts.append((term.weight, part))
        return weighted_sum(parts, field)

    def prompts(self, prompts: list[str]) -> np.ndarray:
        """Unit embeddings of label prompts (float32 (n, d)), through the text tower's batcher like any query."""
        futures = [self.submit_text(prompt, "labels") for prompt in prompts]
        return np.stack([self.wait(future).vector for future in futures])

    def submit_text(self, text: str, field: str, target: Modality | None = None, k: int = 0,
                    allowed: Allowed | None = None, fusion: Fusion | None = None,
                    background: bool = False) -> Future[Embedded]:
        """Queue `text` (checked first) for the text tower; with a `target`, searched in the same batch."""
        check_text(text, field, self.limits)
        return self.pipeline.embed(Modality.TEXT, Pending(text, target, k, allowed, fusion), background)

    def submit_image(self, pixels: torch.Tensor, target: Modality | None = None, k: int = 0,
                     allowed: Allowed | None = None, fusion: Fusion | None = None,
                     background: bool = False) -> Future[Embedded]:
        return self.pipeline.embed(Modality.IMAGE, Pending(pixels, target, k, allowed, fusion), background)

    def text_vector(self, embedded: Embedded, text: str, field: str) -> QueryVector:
        truncated = (field,) if self.encoder.is_truncated(text) else ()
        return QueryVector(embedded.vector, truncated, (Encoding(Modality.TEXT, embedded.encode_s),))

    @staticmethod
    def image_vector(embedded: Embedded) -> QueryVector:
        return QueryVector(embedded.vector, (), (Encoding(Modality.IMAGE, embedded.encode_s),))

    def wait(self, future: Future[Result], waiting_for: str = "the model") -> Result:
        try:
            return future.result(timeout=self.limits.encode_timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: the batcher drops it; already running: it finishes unused
            raise ServiceBusy(f"{waiting_for} did not finish within {self.limits.encode_timeout_s:g} s; "
                              "the server is overloaded, try again") from None

"""SearchService: the short facade the server, the indexer and the tests call to query a bundle.

It is independent of HTTP and thread-safe; each job is an action class of its own: the scope of a
search (clipsearch.search.scope), embedding queries (embedding), searching by vector (vectors),
paging and dedup (results), keyword and hybrid ranking (ranking), explanations (explainer) and
zero-shot labels (clipsearch.model.zero_shot). The callers name the fields (`field=`) where their own names differ;
by default errors use the parameters' names (`text`, `data`, `terms[0].weight`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipsearch.config import DEFAULT_RRF_K, Batching, QueryLimits
from clipsearch.errors import InvalidQuery, ModalityUnavailable, ModelLoadError
from clipsearch.index.searchers import searcher_for
from clipsearch.modality import Modality
from clipsearch.model.audio import AudioEncoder
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.zero_shot import Calibration, LabelScore, ZeroShotClassifier
from clipsearch.search.embedding import QueryEmbedder
from clipsearch.search.explainer import Explainer
from clipsearch.search.hybrid import Ranking, SearchMode, check_ranking
from clipsearch.search.pipeline import QueryPipeline
from clipsearch.search.query import QueryVector, ResultOptions, Term, check_grouping, check_k, check_options
from clipsearch.search.ranking import WordSearch
from clipsearch.search.results import Answer, with_ocr_matches
from clipsearch.search.scope import Scoper, fused_searchers
from clipsearch.search.sounds import SoundQueries
from clipsearch.search.uploads import UploadDecoder
from clipsearch.search.vectors import VectorSearch
from clipsearch.store.bundle import Bundle
from clipsearch.store.collection import Collection, Hit
from clipsearch.store.live import LiveLog

NO_OPTIONS = ResultOptions()
BY_VECTOR = Ranking()


class SearchService:
    """Embeds queries with the bundle's model and searches the bundle's indices (and its live items).

    Concurrent queries are micro-batched (clipsearch.search.pipeline). Exact (Flat) indices are searched
    as a resident matrix on `devices` (default: the model's; split across several, clipsearch.index.sharding),
    others with FAISS, on the GPU when `use_gpu` (clipsearch.index.searchers). A bundle with sounds
    needs their `audio` model (the one its manifest names), whose own towers embed the queries that
    target them (clipsearch.search.sounds).
    """

    def __init__(self, encoder: ClipEncoder, bundle: Bundle, limits: QueryLimits | None = None,
                 use_gpu: bool = False, batching: Batching | None = None, filter_cache_size: int = 64,
                 live: LiveLog | None = None, rrf_k: int = DEFAULT_RRF_K,
                 devices: Sequence[torch.device] | None = None, audio: AudioEncoder | None = None,
                 audio_problem: str | None = None) -> None:
        limits, batching = limits or QueryLimits(), batching or Batching()
        self.encoder, self.bundle, self.limits, self.fusion = encoder, bundle, limits, bundle.fusion
        self.collection = Collection(bundle, live)
        self.devices = list(devices or [encoder.device])
        searchers = {modality: searcher_for(index, bundle.manifest.modalities[modality].index.exact,
                                            self.devices, use_gpu, bundle.stores.get(modality),
                                            bundle.manifest.modalities[modality].index.params.get("rerank", 1))
                     for modality, index in bundle.indices.items()}
        fused = fused_searchers(self.collection, searchers, self.devices, use_gpu)
        self.pipeline = QueryPipeline(encoder, searchers, batching, fused)
        self.uploads = UploadDecoder(encoder.prepare_image, encoder.image_size, limits.max_pixels,
                                     limits.decode_timeout_s)
        self.embedder = QueryEmbedder(encoder, self.pipeline, self.uploads, limits)
        self.scope = Scoper(self.collection, searchers, filter_cache_size)
        self.vectors = VectorSearch(self.collection, self.embedder)
        record = bundle.manifest.audio
        self.sounds = SoundQueries(audio, float(record["hop_s"]), limits, batching) \
            if audio is not None and record is not None else None
        self.audio_problem = audio_problem or "this collection was opened without its audio model"
        """Why the sounds of a bundle that has them cannot be searched, when `sounds` is None."""
        self.words = WordSearch(bundle, self.embedder, self.vectors, rrf_k, self.sounds)
        self.explainer = Explainer(self.collection, self.embedder, batching.max_batch)
        self.classifier = ZeroShotClassifier(Calibration.of(encoder.logit_scale, encoder.logit_bias),
                                             self.embedder.prompts, limits)
        self.embed_text, self.embed_image = self.embedder.text, self.embedder.image
        self.embed_texts, self.embed_images = self.embedder.texts, self.embedder.images
        self.term_shares, self.heatmaps = self.explainer.term_shares, self.explainer.heatmaps
        self.fusion_for = self.scope.fusion_for

    @property
    def modalities(self) -> set[Modality]:
        return self.collection.modalities

    def warm_up(self) -> None:
        """Run one query of each kind through every stage, so the first real one is not slow."""
        gray = self.encoder.prepare_image(Image.new("RGB", (self.encoder.image_size,) * 2, (127, 127, 127)))
        for modality in self.modalities:
            if modality.own_space:
                if self.sounds is not None:
                    self.search_text("a dog barking", modality, 1)
                continue
            self.embedder.wait(self.embedder.submit_text("a photo of a dog", "text", modality, 1))
            image = self.embedder.wait(self.embedder.submit_image(gray, modality, 1))
            self.search(image.vector, modality, 1)

    def close(self) -> None:
        self.pipeline.close()
        self.uploads.close()
        if self.sounds is not None:
            self.sounds.close()
        self.explainer.close()

    def search_text(self, text: str, target: Modality, k: int, field: str = "text",
                    options: ResultOptions = NO_OPTIONS, ranking: Ranking = BY_VECTOR) -> Answer:
        """Embed `text` and search `target` for it, both in the batch of the text tower's next pass;
        or, by `ranking`, search its words (keyword) or do both and fuse the rankings (hybrid)."""
        self.check_target(target, k, options)
        check_ranking(ranking)
        check_grouping(options, target, ranking.mode is SearchMode.VECTOR)
        scope = self.scope(target, options.filter, self.fusion_for(target, options))
        if ranking.mode is not SearchMode.VECTOR:
            answer = self.words(text, field, target, k, options, ranking, scope)
        elif target.own_space:
            answer = self.vectors.vector(self._sounds().text(text, field), target, k, options, scope)
        else:
            answer = self.vectors.text(text, field, target, k, options, scope)
        return with_ocr_matches(answer, text) if target is Modality.IMAGE else answer

    def search_image(self, data: bytes, target: Modality, k: int, field: str = "data",
                     options: ResultOptions = NO_OPTIONS) -> Answer:
        """Decode and embed the image `data` and search `target` for it, batched like search_text."""
        self.check_target(target, k, options)
        if target.own_space:
            raise InvalidQuery("target", f"{target.value} items are in the audio model's space: search them by text "
                                         "or by a sound clip (/search/audio), not by an image")
        check_grouping(options, target, True)
        scope = self.scope(target, options.filter, self.fusion_for(target, options))
        return self.vectors.image(self.uploads.decode(data, field), target, k, options, scope)

    def search_audio(self, data: bytes, target: Modality, k: int, field: str = "file",
                     options: ResultOptions = NO_OPTIONS) -> Answer:
        """Read the sound clip `data`, embed it with the audio model and search `target` (sounds) for it."""
        self.check_target(target, k, options)
        if not target.own_space:
            raise InvalidQuery("target", f"a sound clip searches sounds (target 'audio'), not {target.value} "
                                         "items: they are in the image model's space")
        check_grouping(options, target, True)
        scope = self.scope(target, options.filter, None)
        return self.vectors.vector(self._sounds().clip(data, field), target, k, options, scope)

    def embed_terms(self, terms: Sequence[Term], field: str = "terms") -> QueryVector:
        """The weighted sum of the terms' unit embeddings, renormalised to unit length (in the image
        model's space: an item of the audio model's is refused, naming its term)."""
        def stored_vector(item_id: int, term_field: str) -> np.ndarray:
            item = self.collection.item(item_id, term_field)
            if item.modality.own_space:
                raise InvalidQuery(term_field, f"item {item_id} is a {item.modality.value} item, in the audio "
                                               "model's space; composed queries mix the image model's vectors")
            return self.collection.stored_vector(item_id, term_field)
        return self.embedder.terms(terms, field, stored_vector)

    def search(self, query: np.ndarray, target: Modality, k: int) -> list[Hit]:
        """The k items of `target` modality most similar to `query` (float32 (d,)), best first."""
        return self.search_vector(QueryVector(query), target, k).hits

    def search_vector(self, query: QueryVector, target: Modality, k: int,
                      options: ResultOptions = NO_OPTIONS) -> Answer:
        self.check_target(target, k, options)
        if target.own_space:  # a vector given here is the image model's: a composed query, an item's
            raise InvalidQuery("target", f"{target.value} items are in the audio model's space: search them by "
                                         "text (/search/text) or by a sound clip (/search/audio)")
        check_grouping(options, target, True)
        scope = self.scope(target, options.filter, self.fusion_for(target, options))
        return self.vectors.vector(query, target, k, options, scope)

    def search_many(self, queries: np.ndarray, target: Modality, k: int) -> list[list[Hit]]:
        """Top-k for each row of `queries` (float32 (n, d)); scores are cosine similarities."""
        self.check_target(target, k)
        futures = [self.pipeline.search(query, target, k) for query in queries]
        return self.collection.hits([self.embedder.wait(future, "the search").found for future in futures],
                                    of_segments=target.timed)

    def classify(self, image_vector: np.ndarray, labels: Sequence[str], templates: Sequence[str] | None = None,
                 multi_label: bool = False) -> list[LabelScore]:
        """Zero-shot labels for one unit image embedding, best first (clipsearch.model.zero_shot)."""
        return self.classifier.classify(image_vector[None, :], labels, templates, multi_label)[0]

    def image_item_vector(self, item_id: int, field: str = "item_id") -> np.ndarray:
        """The stored vector of an image item; a text item is refused, naming `field`."""
        item = self.collection.item(item_id, field)
        if item.modality is not Modality.IMAGE:
            raise InvalidQuery(field, f"item {item_id} is a {item.modality.value}, not an image")
        return self.collection.stored_vector(item_id, field)

    def check_target(self, target: Modality, k: int, options: ResultOptions = NO_OPTIONS) -> None:
        """Refuse a k or options out of range or a target modality the bundle lacks, before any work is done."""
        check_k(k, self.limits)
        check_options(options, self.limits)
        if target not in self.modalities:
            present = ", ".join(sorted(self.modalities)) or "none"
            raise ModalityUnavailable("target", f"the bundle has no {target.value} items (it has: {present})")

    def _sounds(self) -> SoundQueries:
        if self.sounds is None:
            raise ModelLoadError(f"this collection's sounds cannot be searched: {self.audio_problem}", "target")
        return self.sounds

"""A model-based test of fused collections (Hypothesis's stateful testing): adds, caption edits,
deletes and compactions beside a plain model of every live image's vectors, whatever texts the
collection fuses (tests/features/test_fusion.py, test_fused_text_in_images.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from PIL import Image

from clipsearch.index.fusion import Fusion
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import close_service, open_service
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.writes import CollectionWriter, ImageEntry
from clipsearch.store.compaction import compact
from clipsearch.store.ocr_text import readable_text
from tests.support.corpora import private_copy
from tests.support.imagefiles import image_bytes, noise_image, picture_at, upload_path
from tests.support.reference import FusedModel, fused_scores_by_hand

CAPTIONS = [None, "a red kite", "a dog on the beach", "snow at night"]


class FusedCollectionMachine(RuleBasedStateMachine):
    """A fused collection under adds, caption edits, deletes and compactions, beside `model`: id →
    (image vector, {text part: vector}) of every image that should be live. Every search must rank
    as the fused scores worked from the model, at each of `weights`."""

    encoder: ClipEncoder
    source: Path
    scratch: Path
    weights: tuple[Fusion, ...] = (Fusion(0.7, 0.3), Fusion(0.2, 0.8))
    picture: Callable[[int], Image.Image] = staticmethod(lambda seed: noise_image(50_000 + seed))
    """The picture an add writes, by its seed."""

    def __init__(self) -> None:
        super().__init__()
        self.path = private_copy(self.source, Path(tempfile.mkdtemp(dir=self.scratch)))
        self._open()
        self.model: FusedModel = {}
        images = [item for item in self.service.bundle.items if item.modality is Modality.IMAGE]
        vectors = self.encoder.encode_images([picture_at(Path(item.uri)) for item in images])
        for item, vector in zip(images, vectors, strict=True):
            self.model[item.id] = (vector, self._texts(item.text, item.extra))
        self.items: dict[int, tuple[str, str | None]] = {item.id: (item.uri, item.text)
                                                         for item in self.service.bundle.items}
        """id → (uri, caption) of every live image: what reading an item back must give."""
        self.queries = self.encoder.encode_texts(["a red kite", "snow"])

    def _open(self) -> None:
        self.service = open_service(self.encoder, self.path)
        self.writer = CollectionWriter(self.service)

    def _texts(self, caption: str | None, extra: dict[str, Any]) -> dict[str, np.ndarray]:
        """The vectors of an image's caption and of the text read in it (as its metadata holds it: the
        fusion is under test here, not the reading), embedded here."""
        texts = {"caption": caption or "", "ocr": readable_text(extra)}
        return {part: self.encoder.encode_texts([text])[0] for part, text in texts.items() if text}

    @rule(seed=st.integers(0, 10_000), caption=st.sampled_from(CAPTIONS))
    def add_image(self, seed: int, caption: str | None) -> None:
        data = image_bytes(self.picture(seed))
        [item_id] = self.writer.add_images([ImageEntry(data, caption=caption)])
        self.model[item_id] = (self.encoder.encode_images([self.picture(seed)])[0],
                               self._texts(caption, self.service.collection.item(item_id).extra))
        # An upload is stored in the bundle under its content's hash.
        self.items[item_id] = (upload_path(self.path, data), caption)

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 10_000), caption=st.sampled_from(CAPTIONS))
    def set_caption(self, pick: int, caption: str | None) -> None:
        item_id = sorted(self.model)[pick % len(self.model)]
        self.writer.update(item_id, caption=caption)
        self.model[item_id] = (self.model[item_id][0],
                               self._texts(caption, self.service.collection.item(item_id).extra))
        self.items[item_id] = (self.items[item_id][0], caption)

    @precondition(lambda self: len(self.model) > 1)
    @rule(pick=st.integers(0, 10_000))
    def delete(self, pick: int) -> None:
        item_id = sorted(self.model)[pick % len(self.model)]
        assert self.writer.delete([item_id]) == [item_id]
        del self.model[item_id], self.items[item_id]

    @rule()
    def compact(self) -> None:
        close_service(self.service)
        compact(self.path)
        self._open()

    @invariant()
    def searches_rank_by_the_fused_scores_of_the_live_images(self) -> None:
        for fusion in self.weights:
            for query in self.queries:
                expected = fused_scores_by_hand(self.model, query, fusion.as_dict())
                hits = self.service.search_vector(QueryVector(query), Modality.IMAGE, 10,
                                                  ResultOptions(fusion=fusion)).hits
                assert [hit.score for hit in hits] == pytest.approx(
                    sorted(expected.values(), reverse=True)[:10], abs=1e-5)
                assert all(expected[hit.item.id] == pytest.approx(hit.score, abs=1e-5) for hit in hits)

    @invariant()
    def every_live_image_reads_back_with_its_uri_and_caption(self) -> None:
        assert self.service.collection.count(Modality.IMAGE) == len(self.items)
        for item_id, (uri, caption) in self.items.items():
            item = self.service.collection.item(item_id)
            assert (item.modality, item.uri, item.text) == (Modality.IMAGE, uri, caption)

    def teardown(self) -> None:
        close_service(self.service)
        shutil.rmtree(self.path.parent, ignore_errors=True)

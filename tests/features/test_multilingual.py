"""A collection indexed by a model of either multilingual family is searched in Chinese and in English, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.open import opened_service
from clipsearch.store.bundle import load_bundle
from indexer.demo import DEMO_CHECKPOINT
from indexer.shapes import write_shapes_corpus
from tests.support.corpora import tiny_config
from tests.support.reference import stored_vectors

pytest.importorskip("transformers", reason="the [multilingual] extra is not installed")

MODELS = [("tiny-multilingual", DEMO_CHECKPOINT), ("tiny-chinese-clip", None)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_corpus(out, count=40, seed=3, language="both")
    return out / "images"


@pytest.mark.parametrize(("model", "checkpoint"), MODELS)
def test_a_chinese_query_ranks_the_bundle_as_its_vector_does_against_every_stored_image(
        model: str, checkpoint: Path | None, shapes: Path, tmp_path: Path) -> None:
    build(tiny_config(tmp_path / "bundle", model=model, checkpoint=checkpoint, images=shapes))
    encoder = load_encoder(model, pretrained=None, checkpoint=checkpoint, device="cpu", backend="torch")
    ids, vectors = stored_vectors(load_bundle(tmp_path / "bundle"), Modality.IMAGE)
    with opened_service(encoder, tmp_path / "bundle") as service:
        for query in ("左边的红色圆形", "a red circle on the left", "红色 circle"):
            expected = ids[np.argsort(-(vectors @ encoder.encode_texts([query])[0]), kind="stable")[:5]]
            found = [hit.item.id for hit in service.search_text(query, Modality.IMAGE, 5).hits]
            assert found == expected.tolist(), query
        # The captions hold both languages: a Chinese word finds its scenes through the keyword index too.
        words = service.search_text("红色", Modality.IMAGE, 40, ranking=Ranking(SearchMode.KEYWORD)).hits
        assert words and all("红色" in (hit.item.text or "") for hit in words)

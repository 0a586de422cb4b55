"""A multilingual bundle's server answers Chinese over HTTP, and refuses a language its model cannot take."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.settings import Settings
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.store.bundle import load_bundle
from indexer.demo import DEMO_CHECKPOINT
from indexer.shapes import write_shapes_corpus
from tests.support.corpora import tiny_config
from tests.support.reference import stored_vectors
from tests.support.serving import LIMITS, serve

pytest.importorskip("transformers", reason="the [multilingual] extra is not installed")


@pytest.fixture(scope="module")
def multilingual_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multilingual")
    write_shapes_corpus(out, count=60, seed=4, language="both")
    build(tiny_config(out / "bundle", model="tiny-multilingual", checkpoint=DEMO_CHECKPOINT, images=out / "images"))
    return out / "bundle"


@pytest.fixture(scope="module")
def url(multilingual_bundle: Path) -> Iterator[str]:
    settings = Settings(bundle_path=multilingual_bundle, device="cpu", checkpoint=DEMO_CHECKPOINT,  # type: ignore[call-arg]
                        **LIMITS)
    with serve(settings) as served:
        yield served


def test_a_chinese_query_over_http_ranks_as_its_vector_does(url: str, multilingual_bundle: Path) -> None:
    assert httpx.get(f"{url}/info").json()["model"] == "tiny-multilingual"
    encoder = load_encoder("tiny-multilingual", pretrained=None, checkpoint=DEMO_CHECKPOINT, device="cpu",
                           backend="torch")
    ids, vectors = stored_vectors(load_bundle(multilingual_bundle), Modality.IMAGE)
    for query in ("左边的红色圆形", "右边的蓝色三角形"):
        answer = httpx.post(f"{url}/search/text", json={"text": query, "target": "image", "k": 5}, timeout=30)
        assert answer.status_code == 200, answer.text
        expected = ids[np.argsort(-(vectors @ encoder.encode_texts([query])[0]), kind="stable")[:5]]
        assert [hit["id"] for hit in answer.json()["results"]] == expected.tolist()


def test_a_text_language_the_model_cannot_take_keeps_the_server_unready_and_says_why(
        multilingual_bundle: Path) -> None:
    settings = Settings(bundle_path=multilingual_bundle, device="cpu", checkpoint=DEMO_CHECKPOINT,  # type: ignore[call-arg]
                        text_language="zho_Hans", **LIMITS)
    with serve(settings) as served:
        ready = httpx.get(f"{served}/ready")
    assert ready.status_code == 503 and "takes no language" in ready.text

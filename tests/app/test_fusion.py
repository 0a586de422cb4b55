"""Fused image (and video) search over HTTP: a bundle built with --fuse, its weights at /info,
per-query weights, what each part adds, and the errors that name the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchClient, Query
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from tests.support.corpora import tiny_config
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import LIMITS, serve
from tests.support.videos import SCENE_COLOURS, write_scenes


@pytest.fixture(scope="module")
def fused_url(fused_bundle_path: Path) -> Iterator[str]:
    with serve(Settings(bundle_path=fused_bundle_path, device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture()
def fused_client(fused_url: str) -> Iterator[ClipSearchClient]:
    with ClipSearchClient(fused_url) as client:
        yield client


def test_info_gives_the_bundles_fusion_weights(fused_url: str) -> None:
    info = httpx.get(f"{fused_url}/info").json()
    assert info["fusion"] == pytest.approx({"image": 0.7, "caption": 0.3})


def test_each_image_result_says_what_its_image_and_caption_add(fused_client: ClipSearchClient) -> None:
    result = fused_client.search_text("caption of picture 9", k=10)
    for hit in result.results:
        assert hit.fused is not None and sum(hit.fused.values()) == pytest.approx(hit.score, abs=1e-5)
        assert set(hit.fused) == ({"image", "caption"} if hit.caption else {"image"})


def test_weighing_the_caption_alone_finds_the_image_captioned_with_the_query(fused_client: ClipSearchClient) -> None:
    result = fused_client.search_text("caption of picture 9", k=3, fusion={"image": 0, "caption": 1})
    assert result.results[0].caption == "caption of picture 9"
    assert result.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_uploads_and_composed_queries_take_fusion_weights_too(fused_client: ClipSearchClient) -> None:
    for result in (fused_client.search_image(image_bytes(noise_image(5)), k=5, fusion={"image": 1}),
                   fused_client.search([Query(text="caption of picture 3")], k=5, fusion={"image": 1})):
        # The picture alone: whatever the caption says adds nothing.
        assert [hit.fused["image"] for hit in result.results if hit.fused] == \
            pytest.approx([hit.score for hit in result.results], abs=1e-5)
        assert all(hit.fused.get("caption", 0.0) == 0.0 for hit in result.results if hit.fused)


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"text": "a", "fusion": {"image": -1}}, "fusion.image", "0 or more"),
    ({"text": "a", "fusion": {"text": 1}}, "fusion.text", "only 'image', 'caption' and 'ocr'"),
    ({"text": "a", "fusion": {"image": 1, "ocr": 1}}, "fusion.ocr", "stores no ocr vectors"),
    ({"text": "a", "fusion": {"image": 0, "caption": 0}}, "fusion", "above 0"),
    ({"text": "a", "fusion": "image=1"}, "fusion", "valid dictionary"),
])
def test_bad_fusion_weights_name_the_field(fused_url: str, body: dict[str, object], field: str, reason: str) -> None:
    response = httpx.post(f"{fused_url}/search/text", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and reason in response.json()["reason"]


def test_a_bundle_without_caption_vectors_says_to_build_with_fuse(http: httpx.Client) -> None:
    response = http.post("/search/text", json={"text": "a", "fusion": {"image": 1, "caption": 1}})
    assert response.status_code == 422 and response.json()["field"] == "fusion"
    assert "--fuse" in response.json()["reason"]


@pytest.fixture(scope="module")
def fused_videos_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("fused-videos")
    (root / "videos").mkdir()
    for number, caption in enumerate(("a red kite", "the blue sea", None)):
        write_scenes(root / "videos" / f"clip{number}.mp4", [(SCENE_COLOURS[number], 1.0), (SCENE_COLOURS[3], 1.0)])
        if caption is not None:
            (root / "videos" / f"clip{number}.txt").write_text(caption)
    build(tiny_config(root / "bundle", videos=root / "videos", fuse=Fusion(0.7, 0.3)))
    with serve(Settings(bundle_path=root / "bundle", device="cpu", **LIMITS)) as url:  # type: ignore[arg-type]
        yield url


def test_a_video_result_says_what_its_best_segment_and_its_caption_add(fused_videos_url: str) -> None:
    with ClipSearchClient(fused_videos_url) as client:
        result = client.search_text("the blue sea", target="video", k=3, fusion={"image": 0, "caption": 1})
        best = result.results[0]
        assert best.caption == "the blue sea" and best.score == pytest.approx(1.0, abs=1e-5)
        assert best.segment is not None and best.fused == pytest.approx({"image": 0.0, "caption": 1.0}, abs=1e-5)
        for hit in client.search_text("a kite", target="video", k=3).results:
            assert hit.fused is not None and sum(hit.fused.values()) == pytest.approx(hit.score, abs=1e-5)
            assert set(hit.fused) == ({"image", "caption"} if hit.caption else {"image"})

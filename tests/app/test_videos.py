"""Videos over HTTP: text and image queries find the video once, at the right moment; every
segment with group_by 'segments'; filters, keyword search and deletes treat a video as one item;
the file is served with byte ranges and each segment's frame as a thumbnail."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from clipsearch.ingest.build import build
from tests.support.browser import chromium, expect, first_card_for
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.fuzzing import fuzz
from tests.support.imagefiles import image_bytes
from tests.support.serving import ADMIN, LIMITS, serve
from tests.support.videos import SCENE_COLOURS, four_scenes, scene_frame, write_scenes

pytest.importorskip("av")


@pytest.fixture(scope="module")
def video_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("video-corpus")
    videos = root / "videos"
    videos.mkdir()
    four_scenes(videos / "four.mp4")
    (videos / "four.txt").write_text("red green blue yellow", encoding="utf-8")
    (videos / "four.json").write_text(json.dumps({"album": "colours"}), encoding="utf-8")
    write_scenes(videos / "two.webm", [(SCENE_COLOURS[4], 3.0), (SCENE_COLOURS[5], 3.0)], codec="libvpx-vp9",
                 container="webm")
    (videos / "two.json").write_text(json.dumps({"album": "other"}), encoding="utf-8")
    (videos / "cut.mp4").write_bytes((videos / "four.mp4").read_bytes()[:700])
    make_image_corpus(root / "images", 6)
    out = tmp_path_factory.mktemp("video-bundle") / "bundle"
    build(tiny_config(out, videos=videos, images=root / "images"))
    return out


@pytest.fixture(scope="module")
def url(video_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = Path(shutil.copytree(video_bundle, tmp_path_factory.mktemp("served") / "bundle"))
    settings = Settings(bundle_path=bundle, device="cpu", admin_key=ADMIN, **LIMITS)  # type: ignore[arg-type]
    with serve(settings) as served:
        yield served


@pytest.fixture()
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60, headers={"X-Admin-Key": ADMIN}) as client:
        yield client


def _video_id(http: httpx.Client, name: str) -> int:
    found = http.post("/search/text", json={"text": "video", "target": "video", "k": 10}).json()["results"]
    return next(hit["id"] for hit in found if hit["uri"].endswith(name))


def _frame(colour_number: int) -> bytes:
    """A frame of scene `colour_number` of the four-scene video, as a PNG upload."""
    pixels = scene_frame(SCENE_COLOURS[colour_number], 96, 64, seed=colour_number * 1000)
    return image_bytes(Image.fromarray(pixels), "PNG")


def test_an_image_of_a_frame_from_4_to_6_s_finds_that_video_with_a_segment_covering_4_to_6_s(
        http: httpx.Client) -> None:
    answer = http.post("/search/image", files={"file": ("blue.png", _frame(2))},
                       data={"target": "video", "k": "5"})
    assert answer.status_code == 200, answer.text
    best = answer.json()["results"][0]
    assert best["uri"].endswith("four.mp4") and best["modality"] == "video"
    assert best["segment"]["start_s"] <= 4.0 and best["segment"]["end_s"] >= 6.0
    assert best["segment"]["end_s"] - best["segment"]["start_s"] <= 2.5
    assert best["score"] == pytest.approx(max(moment["score"] for moment in best["moments"]), abs=1e-5)
    assert [moment["start_s"] for moment in best["moments"]] == sorted(moment["start_s"] for moment in best["moments"])


def test_a_video_is_returned_once_by_default_and_once_per_segment_with_group_by_segments(http: httpx.Client) -> None:
    by_item = http.post("/search/image", files={"file": ("blue.png", _frame(2))},
                        data={"target": "video", "k": "10"}).json()
    assert [hit["uri"].rsplit("/", 1)[-1] for hit in by_item["results"]] in (["four.mp4", "two.webm"],)
    assert by_item["matched"] == 2
    by_segment = http.post("/search/image", files={"file": ("blue.png", _frame(2))},
                           data={"target": "video", "k": "10", "group_by": "segments"}).json()
    four = [hit for hit in by_segment["results"] if hit["uri"].endswith("four.mp4")]
    assert sorted((hit["segment"]["start_s"], hit["segment"]["end_s"]) for hit in four) == \
        [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
    assert by_segment["results"][0]["segment"] == {**by_item["results"][0]["segment"]}
    scores = [hit["score"] for hit in by_segment["results"]]
    assert scores == sorted(scores, reverse=True)


def test_a_text_query_finds_videos_by_their_best_segment_as_brute_force_does(http: httpx.Client,
                                                                             video_bundle: Path) -> None:
    from clipsearch.index import faiss_index
    from clipsearch.modality import Modality
    from clipsearch.store.bundle import load_bundle
    from clipsearch.store.segments import items_of

    answer = http.post("/search/text", json={"text": "a blue scene", "target": "video", "k": 2}).json()
    query = np.array(http.post("/embed/text", json={"text": "a blue scene"}).json()["embedding"], dtype=np.float32)
    bundle = load_bundle(video_bundle)
    try:
        ids = faiss_index.ids_of(bundle.indices[Modality.VIDEO])
        scores = bundle.base_vectors(Modality.VIDEO, ids) @ query
    finally:
        bundle.close()
    best = {int(item): float(scores[items_of(ids) == item].max()) for item in np.unique(items_of(ids))}
    expected = sorted(best, key=lambda item: -best[item])
    assert [hit["id"] for hit in answer["results"]] == expected
    assert [hit["score"] for hit in answer["results"]] == pytest.approx([best[item] for item in expected], abs=1e-5)


def test_filters_keyword_search_and_metadata_treat_a_video_as_one_item(http: httpx.Client) -> None:
    filtered = http.post("/search/text", json={"text": "x", "target": "video", "k": 10,
                                                "filter": {"key": "album", "match": {"value": "other"}}}).json()
    assert [hit["uri"].rsplit("/", 1)[-1] for hit in filtered["results"]] == ["two.webm"]
    assert filtered["matched"] == 1
    by_words = http.post("/search/text", json={"text": "yellow", "target": "video", "k": 10,
                                                "mode": "keyword"}).json()
    assert [hit["caption"] for hit in by_words["results"]] == ["red green blue yellow"]
    hybrid = http.post("/search/text", json={"text": "yellow", "target": "video", "k": 10, "mode": "hybrid"}).json()
    assert {hit["uri"].rsplit("/", 1)[-1] for hit in hybrid["results"]} == {"four.mp4", "two.webm"}
    item = http.get(f"/items/{_video_id(http, 'four.mp4')}").json()
    assert item["metadata"]["video"]["segments"] == [[0.0, 2.0], [2.0, 4.0], [4.0, 6.0], [6.0, 8.0]]
    assert item["metadata"]["video"]["duration_s"] == 8.0 and item["metadata"]["album"] == "colours"


def test_the_video_file_is_served_with_byte_ranges_and_a_segment_has_a_thumbnail(http: httpx.Client,
                                                                                 video_bundle: Path) -> None:
    video_id = _video_id(http, "four.mp4")
    whole = http.get(f"/items/{video_id}/video")
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = http.get(f"/items/{video_id}/video", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    hit = http.post("/search/image", files={"file": ("blue.png", _frame(2))},
                    data={"target": "video", "k": "1"}).json()["results"][0]
    thumbnail = http.get(hit["segment"]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    red, green, blue = Image.open(io.BytesIO(thumbnail.content)).convert("RGB").getpixel((2, 2))
    assert blue > 150 and red < 80 and green < 80
    past_the_end = http.get(f"/items/{video_id}/frame", params={"at": 60})
    assert past_the_end.status_code == 422 and "at" in past_the_end.text
    image_id = http.post("/search/text", json={"text": "x", "target": "image", "k": 1}).json()["results"][0]["id"]
    assert http.get(f"/items/{image_id}/video").status_code == 422


def test_a_deleted_video_is_gone_from_every_search_and_its_segments_with_it(http: httpx.Client) -> None:
    video_id = _video_id(http, "two.webm")
    assert http.delete(f"/items/{video_id}").status_code == 200
    for group_by in ("item", "segments"):
        answer = http.post("/search/text", json={"text": "x", "target": "video", "k": 20,
                                                  "group_by": group_by}).json()
        assert all(hit["id"] != video_id for hit in answer["results"])
    assert http.post("/search/text", json={"text": "x", "target": "video", "k": 20}).json()["matched"] == 1


def test_group_by_segments_is_refused_where_there_are_no_segments_or_whole_items_are_compared(
        http: httpx.Client) -> None:
    for body, field in (({"target": "image", "group_by": "segments"}, "group_by"),
                        ({"target": "video", "group_by": "segments", "dedup": True}, "dedup"),
                        ({"target": "video", "group_by": "segments", "mode": "keyword"}, "group_by"),
                        ({"target": "video", "group_by": "moments"}, "group_by")):
        answer = http.post("/search/text", json={"text": "x", **body})
        assert answer.status_code == 422, body
        assert field in answer.text


def test_the_page_plays_a_video_hit_from_its_moment_with_a_strip_of_its_best_moments(url: str) -> None:
    with chromium() as browser:
        page, card = first_card_for(browser, url, "video", "four colours")
        expect(card.locator("video")).to_have_attribute("src", re.compile(r"/items/\d+/video#t=\d"))
        moments = card.locator(".moments .moment")
        expect(moments.first).to_be_visible()
        assert card.locator(".moment.best").count() == 1
        page.wait_for_function("document.querySelector('.moment img').naturalWidth > 0")


@pytest.fixture()
def writable(video_bundle: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    bundle = Path(shutil.copytree(video_bundle, tmp_path / "bundle"))
    settings = Settings(bundle_path=bundle, device="cpu", admin_key=ADMIN, auto_compact=False,  # type: ignore[arg-type]
                        reload_poll_s=3600, video_max_seconds=5, **{**LIMITS, "max_upload_mb": 4.0})
    with serve(settings) as served, httpx.Client(base_url=served, timeout=60,
                                                 headers={"X-Admin-Key": ADMIN}) as client:
        yield client, bundle


def test_a_video_written_to_the_collection_is_cut_as_the_build_cut_and_found_at_its_moment(
        writable: tuple[httpx.Client, Path], tmp_path: Path) -> None:
    from clipsearch.store.compaction import compact

    http, bundle = writable
    upload = write_scenes(tmp_path / "new.mkv", [(SCENE_COLOURS[5], 1.0), (SCENE_COLOURS[2], 3.0)],
                          container="matroska")
    written = http.post("/items", files=[("file", ("new.mkv", upload.read_bytes())),
                                         ("file", ("still.png", _frame(0)))],
                        data={"key": ["clips/new", "stills/red"], "caption": ["cyan then blue", "a red still"]})
    assert written.status_code == 200, written.text
    video_id, image_id = written.json()["ids"]
    item = http.get(f"/items/{video_id}").json()
    assert item["modality"] == "video" and item["caption"] == "cyan then blue"
    assert item["metadata"]["video"]["segments"] == [[0.0, 1.0], [1.0, 4.0]]
    assert http.get(f"/items/{image_id}").json()["modality"] == "image"
    found = http.post("/search/image", files={"file": ("blue.png", _frame(2))},
                      data={"target": "video", "k": "10", "group_by": "segments"}).json()["results"]
    new = [hit for hit in found if hit["id"] == video_id]
    assert [(hit["segment"]["start_s"], hit["segment"]["end_s"]) for hit in new] == [(1.0, 4.0), (0.0, 1.0)]
    assert http.post("/search/text", json={"text": "x", "target": "video", "k": 10}).json()["matched"] == 3
    served = http.get(f"/items/{video_id}/video", headers={"Range": "bytes=0-15"})
    assert served.status_code == 206 and served.content == upload.read_bytes()[:16]
    edited = http.patch(f"/items/{video_id}", json={"caption": "cyan, then blue"})
    assert edited.status_code == 200 and edited.json()["metadata"]["video"]["segments"] == [[0.0, 1.0], [1.0, 4.0]]

    summary = compact(bundle)  # the live video folded into the base, its segments with it
    assert summary is not None and summary.counts["video"] == 3
    after = http.post("/search/image", files={"file": ("blue.png", _frame(2))},
                      data={"target": "video", "k": "10", "group_by": "segments"}).json()["results"]
    assert sorted((hit["id"], hit["segment"]["start_s"]) for hit in after) == \
        sorted((hit["id"], hit["segment"]["start_s"]) for hit in found)
    assert http.delete(f"/items/{video_id}").status_code == 200
    assert all(hit["id"] != video_id for hit in http.post(
        "/search/text", json={"text": "x", "target": "video", "k": 10, "group_by": "segments"}).json()["results"])


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"\x1a\x45\xdf\xa3" + b"\x00" * 200, 422, "not a readable video"),
    (None, 413, "over the limit of 5 s"),
])
def test_a_bad_or_too_long_video_upload_is_refused_naming_the_file_and_nothing_is_written(
        writable: tuple[httpx.Client, Path], tmp_path: Path, data: bytes | None, status: int, reason: str) -> None:
    http, bundle = writable
    if data is None:
        data = write_scenes(tmp_path / "long.mp4", [(SCENE_COLOURS[1], 8.0)], fps=2).read_bytes()
    before = http.get("/info").json()["live_changes"]
    answer = http.post("/items", files=[("file", ("still.png", _frame(0))), ("file", ("clip.mp4", data))])
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == "file[1]" and reason in answer.json()["reason"]
    assert http.get("/info").json()["live_changes"] == before
    assert not any((bundle / "live-images").glob("*")) if (bundle / "live-images").exists() else True


def test_fuzzing_the_search_and_item_routes_of_a_collection_with_videos_finds_no_failure(
        url: str, tmp_path: Path) -> None:
    finished = fuzz(url, tmp_path, "--include-path-regex", "^/(search|items/)", "--header", f"X-API-Key: {ADMIN}",
                    exclude="ignored_auth")
    assert finished.returncode == 0, finished.stdout[-6000:]
    assert httpx.post(f"{url}/search/text", json={"text": "after the fuzz", "target": "video"}).status_code == 200


def test_the_client_returns_each_video_hit_with_its_moment_and_fetches_its_thumbnail(url: str) -> None:
    from clipsearch.client import ClipSearchClient

    with ClipSearchClient(url, admin_key=ADMIN) as client:
        hit = client.search_image(_frame(2), target="video", k=1).results[0]
        assert hit.segment is not None and (hit.segment.start_s, hit.segment.end_s) == (4.0, 6.0)
        assert hit.moments and max(moment.score or 0 for moment in hit.moments) == pytest.approx(hit.score, abs=1e-5)
        assert Image.open(io.BytesIO(client.thumbnail(hit.segment))).format == "JPEG"
        segments = client.search_image(_frame(2), target="video", k=10, group_by="segments").results
        assert len({hit.id for hit in segments}) < len(segments)  # a video answers once per segment found


def test_a_composed_query_finds_the_moment_and_explains_each_terms_share_of_its_score(http: httpx.Client) -> None:
    blue = base64.b64encode(_frame(2)).decode()
    answer = http.post("/search", json={"queries": [{"image_b64": blue}, {"text": "at night", "weight": 0.3}],
                                        "target": "video", "k": 2, "explain": True})
    assert answer.status_code == 200, answer.text
    best = answer.json()["results"][0]
    assert best["uri"].endswith("four.mp4") and best["segment"]["start_s"] == 4.0
    assert sum(best["shares"]) == pytest.approx(best["score"], abs=1e-5)
    fused = http.post("/search/text", json={"text": "x", "target": "video", "fusion": {"image": 1.0}})
    assert fused.status_code == 422 and fused.json()["field"] == "fusion"  # a bundle built without --fuse
    assert "--fuse to weigh images and videos" in fused.json()["reason"]

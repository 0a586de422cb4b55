"""Text in images over HTTP: found by keyword, hybrid and filters, hits that say where the words
are, images written to the collection read as the build read them, and /info naming the engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchClient, NewImage
from clipsearch.quality.reading import Truth, read_truth
from tests.support.imagefiles import image_bytes, noise_image, words_picture
from tests.support.serving import ADMIN, LIMITS, serve


@pytest.fixture(scope="module")
def served(ocr_bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = Path(shutil.copytree(ocr_bundle_path, tmp_path_factory.mktemp("served") / "bundle"))
    settings = Settings(bundle_path=bundle, device="cpu", admin_key=ADMIN, **LIMITS)  # type: ignore[arg-type]
    with serve(settings) as url:
        yield url


@pytest.fixture()
def client(served: str) -> Iterator[ClipSearchClient]:
    with ClipSearchClient(served, admin_key=ADMIN) as opened:
        yield opened


@pytest.fixture(scope="module")
def truths(signs_dir: Path) -> list[Truth]:
    return read_truth(signs_dir)


def test_a_word_shown_in_a_picture_finds_it_by_keyword_with_the_line_that_holds_it(
        client: ClipSearchClient, truths: list[Truth]) -> None:
    for truth in truths:
        [hit] = client.search_text(truth.key, k=1, mode="keyword").results
        assert Path(hit.uri).name == truth.path.name, truth.key
        assert hit.ocr_matches and all(truth.key.lower() in match["words"] for match in hit.ocr_matches)
        match = hit.ocr_matches[0]
        assert truth.key in (match["spaced"] or match["text"]).replace(" ", "")
        assert len(match["box"]) == 4 and all(0 <= x <= 480 and 0 <= y <= 320 for x, y in match["box"])


def test_hybrid_search_ranks_the_picture_that_says_it_first_by_its_words(client: ClipSearchClient,
                                                                          truths: list[Truth]) -> None:
    english = next(truth for truth in truths if truth.language == "en")
    [first, *_] = client.search_text(english.key, k=3, mode="hybrid").results
    assert Path(first.uri).name == english.path.name and first.ranks is not None and first.ranks["keyword"] == 1


def test_a_vector_search_marks_the_words_of_the_query_its_hits_show(client: ClipSearchClient,
                                                                    truths: list[Truth]) -> None:
    hits = client.search_text(f"{truths[0].key} sign", k=len(truths)).results
    marked = [hit for hit in hits if hit.ocr_matches]
    assert [Path(hit.uri).name for hit in marked] == [truths[0].path.name]
    assert all(hit.ocr_matches is None for hit in client.search_text("nothing shown here", k=5).results)


def test_filter_match_text_keeps_the_pictures_that_show_every_word(client: ClipSearchClient,
                                                                   truths: list[Truth]) -> None:
    chinese = next(truth for truth in truths if truth.language == "zh")
    found = client.search_text("anything", k=10, filter={"key": "ocr_text", "match": {"text": chinese.key}})
    assert [Path(hit.uri).name for hit in found.results] == [chinese.path.name] and found.matched == 1


def test_a_written_image_is_read_found_by_its_words_and_keeps_them_through_an_edit(
        client: ClipSearchClient, served: str) -> None:
    [menu] = client.add_images([NewImage(image_bytes(words_picture("Pumpkin soup")), "menus/1.png",
                                         metadata={"album": "food"})])
    [hit] = client.search_text("pumpkin", k=1, mode="keyword").results
    assert hit.id == menu and hit.metadata["ocr_text"] == "Pumpkin soup" and hit.metadata["album"] == "food"
    assert hit.ocr_matches is not None and hit.ocr_matches[0]["words"] == ["pumpkin"]
    edited = httpx.patch(f"{served}/items/{menu}", json={"metadata": {"album": "lunch"}},
                         headers={"X-Admin-Key": ADMIN}).json()
    assert edited["metadata"]["album"] == "lunch" and edited["metadata"]["ocr_text"] == "Pumpkin soup"
    found = client.search_text("x", k=5, filter={"key": "ocr_text", "match": {"text": "soup"}})
    assert found.ids == [menu]


def test_a_written_picture_without_text_is_read_as_having_none(client: ClipSearchClient) -> None:
    [blank] = client.add_images([NewImage(image_bytes(noise_image(7, (64, 64))), "noise/7.png")])
    metadata = client.item(blank)["metadata"]
    assert "ocr_text" not in metadata
    assert metadata["ocr"]["lines"] == [] and metadata["ocr"]["engine"].startswith("rapidocr")
    shows_text = client.search_text("x", k=50, filter={"key": "ocr_text", "exists": True})
    assert blank not in shows_text.ids and len(shows_text.ids) >= 12


def test_info_names_the_engine_and_its_settings(client: ClipSearchClient) -> None:
    ocr = client.info()["ocr"]
    assert ocr["engine"].startswith("rapidocr 1.4.") and ocr["settings"]["detection_side"] == 736

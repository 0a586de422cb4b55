"""Filters, paging and near-duplicate collapsing through the search service, against brute force
over the same bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.collection import Hit
from clipsearch.store.filters import parse_filter
from tests.support.corpora import tiny_config
from tests.support.imagefiles import image_bytes, noise_image, save
from tests.support.reference import brute_force, filter_matches


def _nested(bundle: Bundle) -> dict[str, object]:
    folder = next(item.uri for item in bundle.items if "/nested/" in item.uri).rsplit("/", 1)[0] + "/"
    return {"key": "uri", "match": {"prefix": folder}}


def _ids(hits: list[Hit]) -> list[int]:
    return [hit.item.id for hit in hits]


def test_a_filtered_text_search_equals_brute_force_over_the_matching_items(service: SearchService,
                                                                          bundle: Bundle) -> None:
    raw = {"should": [_nested(bundle), {"key": "number", "range": {"lte": 6}}]}
    matching = [item for item in bundle.items if item.modality is Modality.IMAGE and filter_matches(raw, item)]
    answer = service.search_text("a photo", Modality.IMAGE, 10, options=ResultOptions(filter=parse_filter(raw)))
    vectors = np.stack([bundle.indices[Modality.IMAGE].reconstruct(item.id) for item in matching])
    expected = brute_force(vectors, np.array([item.id for item in matching]), answer.query.vector, 10)
    assert _ids(answer.hits) == expected.ids[0].tolist()
    assert answer.matched == len(matching) == 17  # 15 nested, and pictures 0 and 6 at the top
    assert answer.more


def test_fewer_matches_than_k_answers_fewer_and_says_there_is_no_more(service: SearchService) -> None:
    only = ResultOptions(filter=parse_filter({"key": "number", "match": {"any": [3, 9, 27]}}))
    answer = service.search_text("a photo", Modality.IMAGE, 10, options=only)
    assert len(answer.hits) == 3 and answer.matched == 3 and not answer.more
    assert {hit.item.extra["number"] for hit in answer.hits} == {3, 9, 27}


def test_a_filter_nothing_matches_finds_nothing(service: SearchService) -> None:
    none = ResultOptions(filter=parse_filter({"key": "album", "exists": True}))
    answer = service.search_vector(service.embed_text("x"), Modality.IMAGE, 5, none)
    assert answer.hits == [] and answer.matched == 0 and not answer.more


def test_pages_follow_each_other_and_the_last_says_no_more(service: SearchService) -> None:
    query = service.embed_text("a sentence")
    everything = service.search_vector(query, Modality.TEXT, 20, ResultOptions(offset=0))
    assert everything.matched == 25 and everything.more
    pages = [service.search_vector(query, Modality.TEXT, 10, ResultOptions(offset=offset)) for offset in (0, 10, 20)]
    assert [len(page.hits) for page in pages] == [10, 10, 5]
    assert [page.more for page in pages] == [True, True, False]
    assert [item_id for page in pages for item_id in _ids(page.hits)][:20] == _ids(everything.hits)


def test_uploads_and_composed_queries_take_the_same_options(service: SearchService, bundle: Bundle) -> None:
    options = ResultOptions(filter=parse_filter(_nested(bundle)), offset=2)
    upload = service.search_image(image_bytes(noise_image(3)), Modality.IMAGE, 4, options=options)
    assert all("/nested/" in hit.item.uri for hit in upload.hits)
    unpaged = service.search_image(image_bytes(noise_image(3)), Modality.IMAGE, 6,
                                   options=ResultOptions(filter=options.filter))
    assert _ids(upload.hits) == _ids(unpaged.hits)[2:]




def test_options_out_of_range_are_refused_naming_the_field(service: SearchService) -> None:
    with pytest.raises(InvalidQuery, match="offset: must be between 0 and 50"):
        service.search_text("x", Modality.IMAGE, 5, options=ResultOptions(offset=51))
    with pytest.raises(InvalidQuery, match="dedup: a cosine threshold"):
        service.search_text("x", Modality.IMAGE, 5, options=ResultOptions(dedup=1.5))




@pytest.fixture(scope="module")
def bursts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    """Eight distinct pictures, each saved four times (a burst), plus eight single pictures."""
    root = tmp_path_factory.mktemp("bursts")
    for picture in range(8):
        data = image_bytes(noise_image(700 + picture))
        for copy in range(4):
            save(root / "images" / f"burst{picture}_{copy}.png", data)
    for single in range(8):
        save(root / "images" / f"single{single}.png", image_bytes(noise_image(900 + single)))
    build(tiny_config(root / "bundle", images=root / "images", keep_duplicates=True))
    opened = load_bundle(root / "bundle")
    yield opened
    opened.close()


# The tiny model's random weights put distinct noise pictures within a cosine of 0.995 of each other;
# copies of one picture are at 1.0. A threshold between the two tells them apart.
SAME_PICTURE = 0.999


def test_dedup_collapses_bursts_and_still_returns_k_distinct_pictures(encoder: ClipEncoder, bursts: Bundle) -> None:
    service = SearchService(encoder, bursts)
    query = service.embed_text("a photo")
    plain = service.search_vector(query, Modality.IMAGE, 10)
    deduplicated = service.search_vector(query, Modality.IMAGE, 10, ResultOptions(dedup=SAME_PICTURE))
    service.close()
    assert plain.matched == deduplicated.matched == 40
    assert len(deduplicated.hits) == 10 and deduplicated.more
    pictures = [hit.item.uri.rsplit("/", 1)[1].split("_")[0] for hit in deduplicated.hits]
    assert len(set(pictures)) == 10, pictures
    for hit in deduplicated.hits:
        expected = 3 if Path(hit.item.uri).name.startswith("burst") else 0
        assert len(hit.duplicates) == expected, hit.item.uri
        copies = bursts.items.get_many(list(hit.duplicates)).values()
        assert {copy.uri.rsplit("_", 1)[0] for copy in copies} <= {hit.item.uri.rsplit("_", 1)[0]}
    # The best result leads with or without dedup (copies tie, so which copy leads may differ).
    assert plain.hits[0].item.id in (deduplicated.hits[0].item.id, *deduplicated.hits[0].duplicates)


def test_dedup_pages_through_groups_not_copies(encoder: ClipEncoder, bursts: Bundle) -> None:
    service = SearchService(encoder, bursts)
    query = service.embed_text("a photo")
    first = service.search_vector(query, Modality.IMAGE, 10, ResultOptions(dedup=SAME_PICTURE))
    second = service.search_vector(query, Modality.IMAGE, 10, ResultOptions(dedup=SAME_PICTURE, offset=10))
    service.close()
    assert len(second.hits) == 6 and not second.more  # 16 distinct pictures in all
    assert not set(_ids(first.hits)) & set(_ids(second.hits))

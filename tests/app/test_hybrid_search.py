"""Keyword and hybrid text searches over HTTP, through the Python client."""

from __future__ import annotations

import httpx

from clipsearch.client import ClipSearchClient


def test_a_keyword_search_finds_the_text_holding_the_rare_word_first(client: ClipSearchClient) -> None:
    result = client.search_text("thing number 7", target="text", k=5, mode="keyword")
    assert result.results[0].text == "a sentence about thing number 7"
    assert [hit.ranks for hit in result.results] == [{"keyword": rank} for rank in range(1, 6)]
    assert [hit.score for hit in result.results] == sorted((hit.score for hit in result.results), reverse=True)


def test_a_keyword_search_of_images_searches_their_captions(client: ClipSearchClient) -> None:
    result = client.search_text("caption picture 12", k=3, mode="keyword")
    assert result.results[0].caption == "caption of picture 12"


def test_a_hybrid_search_says_which_lists_each_result_came_from(client: ClipSearchClient) -> None:
    result = client.search_text("thing number 7", target="text", k=10, mode="hybrid")
    vector = client.search_text("thing number 7", target="text", k=50)
    vector_ranks = {hit_id: rank for rank, hit_id in enumerate(vector.ids, 1)}
    assert result.results[0].text == "a sentence about thing number 7"  # first in both lists
    for hit in result.results:
        assert hit.ranks and set(hit.ranks) <= {"vector", "keyword"}
        assert hit.ranks.get("vector") == vector_ranks.get(hit.id)
    assert [hit.score for hit in result.results] == sorted((hit.score for hit in result.results), reverse=True)


def test_a_keyword_search_takes_filters_and_pages(client: ClipSearchClient) -> None:
    only = {"key": "number", "range": {"gte": 10}}
    whole = client.search_text("caption picture", k=10, mode="keyword", filter=only)
    first = client.search_text("caption picture", k=3, mode="keyword", filter=only)
    rest = client.search_text("caption picture", k=3, mode="keyword", filter=only, offset=3)
    assert first.ids + rest.ids == whole.ids[:6]
    assert all(hit.metadata["number"] >= 10 for hit in whole.results)
    assert first.more


def test_vector_mode_results_carry_no_ranks(http: httpx.Client) -> None:
    body = http.post("/search/text", json={"text": "thing", "target": "text", "k": 2}).json()
    assert all(hit["ranks"] is None for hit in body["results"])

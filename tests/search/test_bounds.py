"""A key bound to a filter: its searches narrowed to the filter, items outside it answered as
missing, and writes that would leave it refused."""

from __future__ import annotations

import pytest

from clipsearch.errors import ItemNotFound, OutsideKeyFilter
from clipsearch.modality import Modality
from clipsearch.search.bounds import Bounds
from clipsearch.search.query import ItemTerm, ResultOptions, TextTerm
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle
from clipsearch.store.collection import Collection
from clipsearch.store.filters import parse_filter

SMALL_NUMBERS = {"key": "number", "range": {"lte": 9}}


def _numbered(bundle: Bundle) -> dict[int, int]:
    """Item id → its metadata number, for the pictures that have one (every third)."""
    return {item.id: item.extra["number"] for item in bundle.items if "number" in item.extra}


def test_unbounded_is_everything_and_changes_nothing(service: SearchService, bundle: Bundle) -> None:
    options = ResultOptions(offset=3)
    assert Bounds().options(options) is options
    assert Bounds().visible_ids(service.collection, [1, 2, 999]) == [1, 2, 999]


def test_a_bounded_search_sees_only_the_items_its_filter_passes(service: SearchService, bundle: Bundle) -> None:
    bounds = Bounds.of(SMALL_NUMBERS)
    answer = service.search_text("a photo", Modality.IMAGE, 20, options=bounds.options(ResultOptions()))
    assert sorted(hit.item.extra["number"] for hit in answer.hits) == [0, 3, 6, 9] and answer.matched == 4
    own = ResultOptions(filter=parse_filter({"key": "number", "range": {"gte": 6}}))
    both = service.search_text("a photo", Modality.IMAGE, 20, options=bounds.options(own))
    assert sorted(hit.item.extra["number"] for hit in both.hits) == [6, 9]  # the request's filter and the key's


def test_an_item_outside_the_bounds_is_answered_as_missing(service: SearchService, bundle: Bundle) -> None:
    bounds, numbers = Bounds.of(SMALL_NUMBERS), _numbered(bundle)
    inside = next(item_id for item_id, number in numbers.items() if number == 3)
    outside = next(item_id for item_id, number in numbers.items() if number == 12)
    assert bounds.item(service.collection, inside).id == inside
    with pytest.raises(ItemNotFound) as missing:
        bounds.item(service.collection, outside, "item_id")
    assert missing.value.field == "item_id" and str(outside) in missing.value.reason
    assert bounds.visible_ids(service.collection, [outside, inside, 10**9]) == [inside]
    with pytest.raises(ItemNotFound) as named:
        bounds.check_terms(service.collection, [TextTerm("x"), ItemTerm(outside)])
    assert named.value.field == "terms[1].item_id"


def test_a_write_that_would_leave_the_bounds_is_refused_naming_the_field(service: SearchService) -> None:
    bounds = Bounds.of({"key": "owner", "match": {"value": "ann"}})
    collection: Collection = service.collection
    bounds.check_new(collection, Modality.TEXT, "hello", {"owner": "ann"}, "items[0]")
    with pytest.raises(OutsideKeyFilter) as refused:
        bounds.check_new(collection, Modality.TEXT, "hello", {"owner": "bob"}, "items[1]")
    assert refused.value.field == "items[1].metadata" and '"owner"' in refused.value.reason
    with pytest.raises(OutsideKeyFilter):
        bounds.check_new(collection, Modality.IMAGE, None, {}, "file[0]")

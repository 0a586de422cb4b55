"""Filters: compiled SQL agrees with a plain-Python reference on random items and filters, and
every malformed filter is refused naming the path inside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.store.filters import MAX_CONDITIONS, MAX_DEPTH, parse_filter
from clipsearch.store.items import Item, ItemStore, write_items
from tests.support.reference import filter_matches

ALBUMS = ["Paris", "paris", "Rome", "Paris 2020", "", "Paris2020", "北京发票"]
LABELS = ["beach", "city", "snow"]

scalars = st.one_of(st.sampled_from(ALBUMS), st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.5]), st.booleans())
metadata_values = st.one_of(scalars, st.none(), st.lists(st.one_of(st.sampled_from(LABELS), st.integers(0, 2)),
                                                         max_size=3),
                            st.fixed_dictionaries({"year": st.integers(2018, 2022)}))
metadata = st.dictionaries(st.sampled_from(["album", "year", "labels", "exif", "uri"]), metadata_values, max_size=4)


@st.composite
def items(draw: st.DrawFn) -> list[Item]:
    count = draw(st.integers(1, 12))
    made = []
    for item_id in range(count):
        modality = draw(st.sampled_from(list(Modality)))
        made.append(Item(id=item_id * 3, modality=modality, uri=draw(st.sampled_from(["/a/x.jpg", "/a/b/y.png",
                                                                                         "/c/z.jpg"])),
                         text=draw(st.one_of(st.none(), st.sampled_from(["a dog", "a cat"]))),
                         extra=draw(metadata), content_hash=str(item_id)))
    return made


keys = st.sampled_from(["album", "year", "labels", "exif.year", "metadata.uri", "uri", "id", "caption", "text",
                        "modality", "missing"])


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(keys)
    kind = draw(st.sampled_from(["value", "any", "prefix", "range", "exists", "text"]))
    if kind == "exists":
        return {"key": key, "exists": draw(st.booleans())}
    if kind == "text" and key != "id":
        return {"key": key, "match": {"text": draw(st.sampled_from(["paris", "Paris 2020", "2020", "a dog", "dog a",
                                                                    "par", "发票", "jpg", "x.jpg"]))}}
    if key in ("id",):
        value: Any = draw(st.integers(-1, 40))
        kind = "range" if kind == "prefix" else kind
    elif key in ("uri", "caption", "text", "modality"):
        value = draw(st.sampled_from(["/a/", "/a/x.jpg", "a dog", "image", "text", "a"]))
    else:
        value = draw(scalars)
    if kind == "prefix":
        return {"key": key, "match": {"prefix": value if isinstance(value, str) and value else "Par"}}
    if kind == "range":
        bound = draw(st.sampled_from(["gt", "gte", "lt", "lte"]))
        usable = value if not isinstance(value, bool) else 1
        return {"key": key, "range": {bound: usable}}
    if kind == "any":
        return {"key": key, "match": {"any": [value, *draw(st.lists(scalars if key not in ("id",) else
                                                                     st.integers(0, 40), max_size=2))]}}
    return {"key": key, "match": {"value": value}}


filters = st.recursive(conditions(), lambda children: st.dictionaries(
    st.sampled_from(["must", "should", "must_not"]), st.lists(children, min_size=1, max_size=3), min_size=1),
    max_leaves=6)


def _store(path: Path, made: list[Item]) -> ItemStore:
    write_items(path, made)
    return ItemStore(path)


def _valid_for_columns(raw: dict[str, Any]) -> bool:
    """Item columns refuse values of the wrong type; the generator may make such filters."""
    try:
        parse_filter(raw)
    except InvalidQuery:
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(made=items(), raw=filters)
def test_compiled_filters_match_exactly_the_items_the_reference_matches(tmp_path: Path, made: list[Item],
                                                                       raw: dict[str, Any]) -> None:
    assume(_valid_for_columns(raw))
    path = tmp_path / f"items-{abs(hash(repr(made)))}.sqlite"
    path.unlink(missing_ok=True)
    store = _store(path, made)
    try:
        compiled = parse_filter(raw)
        for modality in Modality:
            found = store.matching_ids(modality, compiled.sql, compiled.params)
            expected = [item.id for item in made if item.modality is modality and filter_matches(raw, item)]
            assert found.tolist() == expected, (raw, compiled.sql)
    finally:
        store.close()
        path.unlink()


@pytest.fixture
def store(tmp_path: Path) -> ItemStore:
    made = [
        Item(1, Modality.IMAGE, "/photos/paris/1.jpg", "the eiffel tower", {"album": "Paris", "year": 2021,
                                                                             "labels": ["city", "night"]}, "h1"),
        Item(2, Modality.IMAGE, "/photos/rome/2.jpg", None, {"album": "Rome", "year": 2019,
                                                              "exif": {"taken": "2019-06-01T10:00:00"}}, "h2"),
        Item(3, Modality.IMAGE, "/photos/3.jpg", None, {"year": "2021", "labels": []}, "h3"),
        Item(4, Modality.TEXT, "notes.txt#L1", "a note about Paris", {"album": "Paris"}, "h4")]
    return _store(tmp_path / "items.sqlite", made)


def _ids(store: ItemStore, raw: dict[str, Any], modality: Modality = Modality.IMAGE) -> list[int]:
    compiled = parse_filter(raw)
    return list(store.matching_ids(modality, compiled.sql, compiled.params))


def test_equality_range_and_nesting_select_the_expected_items(store: ItemStore) -> None:
    paris_recent = {"must": [{"key": "album", "match": {"value": "Paris"}}, {"key": "year", "range": {"gte": 2020}}]}
    assert _ids(store, paris_recent) == [1]
    assert _ids(store, {"key": "album", "match": {"any": ["Paris", "Rome"]}}) == [1, 2]
    assert _ids(store, {"must_not": [{"key": "album", "match": {"value": "Paris"}}]}) == [2, 3]
    assert _ids(store, {"should": [{"key": "id", "match": {"value": 3}}, {"key": "caption", "exists": True}]}) == [1, 3]


def test_a_list_value_matches_when_any_element_does(store: ItemStore) -> None:
    assert _ids(store, {"key": "labels", "match": {"value": "night"}}) == [1]


def test_an_empty_list_counts_as_absent(store: ItemStore) -> None:
    assert _ids(store, {"key": "labels", "exists": True}) == [1]
    assert _ids(store, {"key": "labels", "exists": False}) == [2, 3]


def test_types_never_mix_a_string_year_is_not_a_number(store: ItemStore) -> None:
    assert _ids(store, {"key": "year", "match": {"value": 2021}}) == [1]
    assert _ids(store, {"key": "year", "match": {"value": "2021"}}) == [3]


def test_nested_keys_and_iso_dates_compare_as_strings(store: ItemStore) -> None:
    assert _ids(store, {"key": "exif.taken", "range": {"gte": "2019-01-01", "lt": "2020-01-01"}}) == [2]


def test_uri_prefix_and_modality_scoped_fields(store: ItemStore) -> None:
    assert _ids(store, {"key": "uri", "match": {"prefix": "/photos/paris/"}}) == [1]
    assert _ids(store, {"key": "text", "match": {"value": "a note about Paris"}}, Modality.TEXT) == [4]
    assert _ids(store, {"key": "caption", "exists": True}, Modality.TEXT) == []


def test_metadata_prefix_reaches_a_metadata_key_named_like_an_item_field(tmp_path: Path) -> None:
    store = _store(tmp_path / "items.sqlite", [Item(1, Modality.IMAGE, "/a.jpg", None, {"uri": "s3://x"}, "h")])
    assert _ids(store, {"key": "metadata.uri", "match": {"value": "s3://x"}}) == [1]
    assert _ids(store, {"key": "uri", "match": {"value": "s3://x"}}) == []


def test_values_are_bound_never_spliced_into_sql(store: ItemStore) -> None:
    hostile = "x' OR 1=1 --"
    compiled = parse_filter({"key": "album", "match": {"value": hostile}})
    assert hostile not in compiled.sql
    assert _ids(store, {"key": "album", "match": {"value": hostile}}) == []


def test_equal_filters_have_equal_canonical_forms() -> None:
    first = parse_filter({"must": [{"key": "a", "match": {"value": 1}}]})
    second = parse_filter({"must": [{"match": {"value": 1}, "key": "a"}]})
    assert first.canonical == second.canonical


def _deep(levels: int) -> dict[str, Any]:
    raw: dict[str, Any] = {"key": "a", "exists": True}
    for _ in range(levels):
        raw = {"must": [raw]}
    return raw


@pytest.mark.parametrize(("raw", "field", "reason"), [
    ([], "filter", "must be an object"),
    ({}, "filter", "at least one of"),
    ({"and": []}, "filter.and", "unknown clause"),
    ({"must": []}, "filter.must", "non-empty list"),
    ({"must": [{"key": "a", "match": {"value": None}}]}, "filter.must[0].match.value", "not null"),
    ({"must": [{"key": "a", "match": {"eq": 1}}]}, "filter.must[0].match", "exactly one of"),
    ({"key": "a", "match": {"value": 1}, "range": {"gt": 1}}, "filter", "exactly one of 'match'"),
    ({"key": "a", "between": [1, 2]}, "filter.between", "unknown test"),
    ({"key": "", "exists": True}, "filter.key", "non-empty"),
    ({"key": "a..b", "exists": True}, "filter.key", "empty parts"),
    ({"key": "a", "exists": "yes"}, "filter.exists", "true or false"),
    ({"key": "a", "range": {"gt": 1, "gte": 2}}, "filter.range", "not both"),
    ({"key": "a", "range": {"gt": 1, "lt": "z"}}, "filter.range", "all be numbers or all strings"),
    ({"key": "a", "range": {"gt": True}}, "filter.range.gt", "not a boolean"),
    ({"key": "a", "range": {"above": 1}}, "filter.range.above", "unknown bound"),
    ({"key": "a", "match": {"any": []}}, "filter.match.any", "non-empty list"),
    ({"key": "a", "match": {"any": [1, [2]]}}, "filter.match.any[1]", "not list"),
    ({"key": "a", "match": {"prefix": 3}}, "filter.match.prefix", "non-empty string"),
    ({"key": "a", "match": {"text": ""}}, "filter.match.text", "non-empty string"),
    ({"key": "a", "match": {"text": "!?"}}, "filter.match.text", "no letters or digits"),
    ({"key": "a", "match": {"text": " ".join(f"w{n}" for n in range(40))}}, "filter.match.text", "at most 32 words"),
    ({"key": "id", "match": {"text": "7"}}, "filter.match.text", "'id' holds numbers"),
    ({"key": "a", "match": {"like": "x"}}, "filter.match", "'value', 'any', 'prefix' and 'text'"),
    ({"key": "id", "match": {"value": "7"}}, "filter.match.value", "'id' holds numbers"),
    ({"key": "uri", "range": {"gt": 3}}, "filter.range.gt", "'uri' holds strings"),
    ({"key": "a", "match": {"value": "\x00"}}, "filter.match.value", "NUL"),
    ({"key": "a", "match": {"value": 2**70}}, "filter.match.value", "64 bits"),
    (_deep(MAX_DEPTH + 1), "filter" + ".must[0]" * MAX_DEPTH, "levels deep"),
    ({"should": [{"key": "a", "exists": True}] * (MAX_CONDITIONS + 1)}, f"filter.should[{MAX_CONDITIONS}]",
     "at most"),
])
def test_a_malformed_filter_is_refused_naming_the_path_inside_it(raw: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        parse_filter(raw)
    assert refused.value.field == field
    assert reason in refused.value.reason


def test_matching_ids_come_back_sorted_as_int64(store: ItemStore) -> None:
    found = store.matching_ids(Modality.IMAGE)
    assert found.dtype == np.int64
    assert found.tolist() == [1, 2, 3]


@pytest.fixture
def read_images(tmp_path: Path) -> ItemStore:
    """Images with the text OCR read from them (clipsearch.store.ocr_text) in their metadata."""
    made = [Item(1, Modality.IMAGE, "/a.jpg", None, {"ocr_text": "INVOICE 2024\nTotal due"}, "h1"),
            Item(2, Modality.IMAGE, "/b.jpg", None, {"ocr_text": "Invoice2024 paid"}, "h2"),
            Item(3, Modality.IMAGE, "/c.jpg", None, {"ocr_text": "北京发票 specialoffer"}, "h3"),
            Item(4, Modality.IMAGE, "/d.jpg", "an invoice", {}, "h4"),
            Item(5, Modality.IMAGE, "/e.jpg", None, {"ocr_text": "invoices, concatenated"}, "h5")]
    return _store(tmp_path / "read.sqlite", made)


@pytest.mark.parametrize(("text", "expected"), [
    ("invoice", [1, 2]),           # case aside; a number may touch it, another letter may not ("invoices")
    ("2024", [1, 2]),
    ("invoice total", [1]),        # every word, in any of the lines
    ("Total invoice!", [1]),       # order and punctuation aside
    ("发票", [3]),                  # Chinese anywhere in its run
    ("cat", []),                   # inside a word: no
    ("offer", []),
])
def test_match_text_finds_items_whose_text_holds_every_word(read_images: ItemStore, text: str,
                                                            expected: list[int]) -> None:
    assert _ids(read_images, {"key": "ocr_text", "match": {"text": text}}) == expected


def test_match_text_tests_item_fields_and_nested_metadata_too(read_images: ItemStore) -> None:
    assert _ids(read_images, {"key": "caption", "match": {"text": "INVOICE"}}) == [4]
    assert _ids(read_images, {"must_not": [{"key": "ocr_text", "match": {"text": "invoice"}}]}) == [3, 4, 5]

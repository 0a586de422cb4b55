"""items.sqlite: written once, read by id, by modality and condition, and streamed in id order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipsearch.modality import Modality
from clipsearch.store.items import Item, ItemStore, sort_value, write_items


def item(item_id: int, modality: Modality = Modality.TEXT, text: str | None = "a text", **extra: object) -> Item:
    return Item(item_id, modality, f"uri-{item_id}", text, dict(extra), f"hash-{item_id}")


@pytest.fixture()
def store(tmp_path: Path) -> ItemStore:
    items = [item(5, Modality.IMAGE, "a cat", album="zoo"), item(1), item(3, Modality.IMAGE, None), item(2, text="b")]
    write_items(tmp_path / "items.sqlite", items)
    return ItemStore(tmp_path / "items.sqlite")


def test_items_read_back_by_id_as_written(store: ItemStore) -> None:
    assert store.get(5) == item(5, Modality.IMAGE, "a cat", album="zoo")
    assert store.get(4) is None
    assert set(store.get_many([1, 2, 99, 1])) == {1, 2}
    assert store.get_many([]) == {}


def test_matching_ids_are_ascending_and_of_one_modality(store: ItemStore) -> None:
    np.testing.assert_array_equal(store.matching_ids(Modality.IMAGE), [3, 5])
    np.testing.assert_array_equal(store.matching_ids(Modality.TEXT, "text = ?", ["b"]), [2])
    assert store.matching_ids(Modality.TEXT).dtype == np.int64


def test_iteration_streams_every_item_by_ascending_id(store: ItemStore) -> None:
    assert [found.id for found in store] == [1, 2, 3, 5]


def test_the_store_is_read_only(store: ItemStore, tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        store._connection.execute("DELETE FROM items")
    assert store.get(1) is not None


def test_a_new_file_has_keyword_tables(store: ItemStore) -> None:
    assert store.has_keyword_tables()


SORTABLE = [item(1, Modality.IMAGE, "a cat", year=2021, when="2020-05-01", flag=True, place={"city": "Paris"}),
            item(2, Modality.TEXT, "a text", year=1999.5, when="2021-01-01", flag=False, place={"city": "Oslo"}),
            item(3, Modality.IMAGE, None, year="unknown", when=["2020"], place="nowhere"),
            item(4, Modality.TEXT, "z", year=None, when={"day": 1}, **{"metadata": {"uri": "inner"}}),
            item(5, Modality.IMAGE, "b", year=2**60)]


@pytest.mark.parametrize("key", ["id", "uri", "modality", "caption", "text", "year", "when", "flag", "place.city",
                                 "place", "metadata.year", "year.month", "metadata.uri", "absent"])
def test_sort_values_read_in_sql_are_those_read_from_the_items(tmp_path: Path, key: str) -> None:
    write_items(tmp_path / "items.sqlite", SORTABLE)
    store = ItemStore(tmp_path / "items.sqlite")
    assert store.sort_values([5, 4, 3, 2, 1, 99], key) == {one.id: sort_value(one, key) for one in SORTABLE}


def test_a_sort_value_is_a_number_a_string_or_none() -> None:
    cat, text, unknown, odd, big = SORTABLE
    assert sort_value(cat, "id") == 1.0 and sort_value(cat, "caption") == "a cat" and sort_value(cat, "text") is None
    assert sort_value(text, "text") == "a text" and sort_value(text, "caption") is None
    assert sort_value(cat, "flag") == 1.0 and sort_value(text, "flag") == 0.0 and sort_value(big, "year") == 2.0**60
    assert sort_value(cat, "place.city") == "Paris" and sort_value(unknown, "place.city") is None
    assert sort_value(unknown, "when") is None and sort_value(odd, "when") is None  # a list, an object
    assert sort_value(odd, "metadata.uri") is None and sort_value(odd, "uri") == "uri-4"

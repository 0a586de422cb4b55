"""Keyword queries and the keyword tables of items.sqlite, against SQLite's own BM25 over a plain
FTS5 table built here (of the words, of the text cut into single characters and pairs for scripts
written without spaces), and, in a bundle from before the bigrams table, against trigrams and a
substring count for queries too short for them."""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.store import keywords
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import Item, ItemStore, write_items
from clipsearch.store.ocr_text import ocr_metadata

TEXTS = [
    "a red bicycle leaning on a wall",
    "a red red car in the rain",
    "the Eiffel tower at night",
    "a bicycle race through Paris",
    "Café au lait on a terrace",
    "我喜欢我的猫",
    "沙发上的猫和狗",
    "a dog asleep on the sofa",
    None,
]


def _items() -> list[Item]:
    made = []
    for number, text in enumerate(TEXTS):
        modality = Modality.IMAGE if number % 2 == 0 else Modality.TEXT
        extra = {"album": "Paris" if number % 3 == 0 else "home", "tags": ["holiday", number], "year": 2020 + number}
        made.append(Item(number, modality, f"/corpus/{number}.png", text, extra, f"hash{number}"))
    return made


@pytest.fixture()
def store(tmp_path: Path) -> ItemStore:
    path = tmp_path / "items.sqlite"
    write_items(path, _items(), keyword_fields=("album", "tags"))
    return ItemStore(path)


BIGRAMS = "bigrams"
"""The tokenizer of _reference that stands for the bigrams table: unicode61 over the bodies cut into pairs."""


def _reference(query: str, modality: Modality, fields: tuple[str, ...], tokenize: str,
               items: list[Item] | None = None) -> list[int]:
    """SQLite's own BM25 order over a plain FTS5 table of the same bodies (ties by id)."""
    items = items if items is not None else _items()
    cut = keywords.segmented if tokenize == BIGRAMS else str
    tokenize = "unicode61 remove_diacritics 2" if tokenize == BIGRAMS else tokenize
    with closing(sqlite3.connect(":memory:")) as memory:
        memory.execute(f"CREATE VIRTUAL TABLE plain USING fts5(body, tokenize='{tokenize}')")
        memory.executemany("INSERT INTO plain (rowid, body) VALUES (?, ?)",
                           [(item.id, cut(keywords.keyword_text(item.text, item.extra, fields))) for item in items])
        rows = memory.execute("SELECT rowid, bm25(plain) FROM plain WHERE plain MATCH ?", (query,)).fetchall()
    wanted = {item.id for item in items if item.modality is modality}
    return [item_id for item_id, _ in sorted(rows, key=lambda row: (row[1], row[0])) if item_id in wanted]


def test_a_query_of_words_ors_them_in_the_words_table() -> None:
    query = keywords.compile_query("Red bicycle, red!")
    assert query == keywords.KeywordQuery(keywords.WORDS_TABLE, '"red" OR "bicycle"', words=("red", "bicycle"))


def test_a_query_in_a_script_without_spaces_is_cut_into_pairs_for_the_bigrams_table() -> None:
    mixed = keywords.compile_query("喜欢我 cat")
    assert (mixed.table, mixed.words) == (keywords.BIGRAMS_TABLE, ("喜欢", "欢我", "cat"))
    assert mixed.fallback == keywords.KeywordQuery(keywords.TRIGRAMS_TABLE, '"喜欢我" OR "cat"')
    alone = keywords.compile_query("猫")
    assert alone.words == ("猫",) and alone.fallback == keywords.KeywordQuery(keywords.TRIGRAMS_TABLE, "猫", scan=True)


def test_text_is_cut_into_single_characters_and_pairs_only_where_written_without_spaces() -> None:
    assert keywords.segmented("红色圆形 on the left").split() == ["红", "色", "圆", "形", "红色", "色圆", "圆形", "on",
                                                                "the", "left"]
    assert keywords.segmented("a 猫").split() == ["a", "猫"]


def test_a_query_without_letters_or_digits_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidQuery) as raised:
        keywords.compile_query("?! …", "queries[0].text")
    assert raised.value.field == "queries[0].text"


def test_keyword_text_holds_the_text_and_the_chosen_fields_values() -> None:
    text = keywords.keyword_text("a cat", {"album": "Paris", "tags": ["x", 3, True, {"a": 1}], "other": "no"},
                                 ("album", "tags", "missing"))
    assert text.splitlines() == ["a cat", "Paris", "x", "3"]


@pytest.mark.parametrize("words", ["red", "red bicycle", "bicycle paris", "cafe", "holiday", "paris night"])
@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.TEXT])
def test_keyword_search_ranks_as_sqlites_own_bm25(store: ItemStore, words: str, modality: Modality) -> None:
    query = keywords.compile_query(words)
    ids, scores = store.keyword_search(query, modality, limit=20)
    assert ids.tolist() == _reference(query.expression, modality, ("album", "tags"),
                                      "unicode61 remove_diacritics 2")
    assert np.all(np.diff(scores) <= 0)


WORDS_OF = {
    0: "a red bicycle leaning on a wall paris holiday 0",
    1: "a red red car in the rain home holiday 1",
    2: "the eiffel tower at night home holiday 2",
    3: "a bicycle race through paris paris holiday 3",
    4: "cafe au lait on a terrace home holiday 4",
    5: "我喜欢我的猫 home holiday 5",
    6: "沙发上的猫和狗 paris holiday 6",
    7: "a dog asleep on the sofa home holiday 7",
    8: "home holiday 8",
}
"""The words of each of _items(), written out by hand: its text, its album and its tags, folded to
lower case without accents; a run of Chinese is one word to the words table."""


def bm25_by_hand(words: list[str], modality: Modality, k1: float = 1.2, b: float = 0.75) -> list[int]:
    """Okapi BM25 as SQLite's FTS5 defines it (k1 1.2, b 0.75, IDF log((N - n + 0.5) / (n + 0.5)),
    at least 1e-6), over every item's words, summed over the query's words that an item holds;
    the items of `modality` that hold any, best first (ties by id)."""
    documents = {item_id: text.split() for item_id, text in WORDS_OF.items()}
    average_length = sum(map(len, documents.values())) / len(documents)
    scores: dict[int, float] = {}
    for item_id, document in documents.items():
        for word in words:
            frequency = document.count(word)
            if not frequency:
                continue
            holding = sum(word in other for other in documents.values())
            idf = max(math.log((len(documents) - holding + 0.5) / (holding + 0.5)), 0.0) or 1e-6
            scores[item_id] = scores.get(item_id, 0.0) + idf * frequency * (k1 + 1) / (
                frequency + k1 * (1 - b + b * len(document) / average_length))
    wanted = [item_id for item_id in scores if (Modality.IMAGE if item_id % 2 == 0 else Modality.TEXT) is modality]
    return sorted(wanted, key=lambda item_id: (-scores[item_id], item_id))


@pytest.mark.parametrize("words", ["red", "red bicycle", "bicycle paris", "Café", "holiday", "paris night"])
@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.TEXT])
def test_keyword_search_ranks_by_bm25_worked_out_by_hand(store: ItemStore, words: str, modality: Modality) -> None:
    ids, _ = store.keyword_search(keywords.compile_query(words), modality, limit=20)
    assert ids.tolist() == bm25_by_hand(words.lower().replace("é", "e").split(), modality)


def test_diacritics_are_folded_and_case_ignored(store: ItemStore) -> None:
    ids, _ = store.keyword_search(keywords.compile_query("CAFÉ"), Modality.IMAGE)
    assert ids.tolist() == [4]


def test_chinese_is_found_through_the_index_as_sqlites_bm25_ranks_it(store: ItemStore) -> None:
    for text in ("沙发上的", "猫", "猫 sofa"):
        query = keywords.compile_query(text)
        for modality in Modality:
            ids, _ = store.keyword_search(query, modality)
            assert ids.tolist() == _reference(query.expression, modality, ("album", "tags"), BIGRAMS), (text, modality)
    assert store.keyword_search(keywords.compile_query("沙发上的"), Modality.IMAGE)[0].tolist() == [6]
    assert set(store.keyword_search(keywords.compile_query("猫"), Modality.TEXT)[0].tolist()) == {5}
    assert set(store.keyword_search(keywords.compile_query("猫 sofa"), Modality.TEXT)[0].tolist()) == {5, 7}


def test_a_two_character_word_ranks_the_items_holding_it_whole_first(tmp_path: Path) -> None:
    path = tmp_path / "items.sqlite"
    items = [Item(1, Modality.TEXT, "a", "红色的车", {}, "h1"),
             Item(2, Modality.TEXT, "b", "红的车和蓝色的花", {}, "h2"),  # 红 and 色, but never 红色
             Item(3, Modality.TEXT, "c", "一辆红色汽车停在左边", {}, "h3"),
             Item(4, Modality.TEXT, "d", "绿色", {}, "h4")]
    write_items(path, items)
    query = keywords.compile_query("红色")
    ids, _ = ItemStore(path).keyword_search(query, Modality.TEXT)
    assert ids.tolist() == _reference(query.expression, Modality.TEXT, (), BIGRAMS, items) == [1, 3]


def _without_bigrams(path: Path) -> None:
    with closing(sqlite3.connect(path)) as connection:
        connection.execute(f"DROP TABLE {keywords.BIGRAMS_VOCABULARY_TABLE}")
        connection.execute(f"DROP TABLE {keywords.BIGRAMS_TABLE}")
        connection.commit()


def test_a_bundle_from_before_the_bigrams_table_finds_chinese_by_trigrams(tmp_path: Path) -> None:
    path = tmp_path / "items.sqlite"
    write_items(path, _items(), keyword_fields=("album", "tags"))
    _without_bigrams(path)
    store = ItemStore(path)
    assert not store.has_keyword_tables()  # a compaction adds them
    query = keywords.compile_query("沙发上的")
    ids, _ = store.keyword_search(query, Modality.IMAGE)
    assert query.fallback is not None
    assert ids.tolist() == _reference(query.fallback.expression, Modality.IMAGE, ("album", "tags"), "trigram") == [6]


def test_there_one_chinese_character_is_found_by_scanning_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "items.sqlite"
    write_items(path, [Item(1, Modality.TEXT, "a", "猫", {}, "h1"), Item(2, Modality.TEXT, "b", "猫和猫", {}, "h2"),
                       Item(3, Modality.TEXT, "c", "狗", {}, "h3"), Item(4, Modality.TEXT, "d", "我的猫", {}, "h4")])
    _without_bigrams(path)
    ids, scores = ItemStore(path).keyword_search(keywords.compile_query("猫"), Modality.TEXT)
    assert ids.tolist() == [2, 1, 4] and scores.tolist() == [2, 1, 1]


def test_a_filter_applies_to_keyword_results(store: ItemStore) -> None:
    only_paris = parse_filter({"key": "album", "match": {"value": "Paris"}})
    ids, _ = store.keyword_search(keywords.compile_query("a"), Modality.IMAGE, only_paris.sql, only_paris.params)
    assert set(ids.tolist()) <= {0, 6} and ids.tolist()


def test_a_limit_keeps_the_best(store: ItemStore) -> None:
    full, _ = store.keyword_search(keywords.compile_query("holiday"), Modality.TEXT, limit=20)
    best, _ = store.keyword_search(keywords.compile_query("holiday"), Modality.TEXT, limit=2)
    assert best.tolist() == full[:2].tolist() and len(full) == 4


def _common_word_store(tmp_path: Path) -> tuple[ItemStore, list[Item]]:
    """Every text holds "a"; a few hold "zebra" or "okapi", once or twice, in texts of different lengths."""
    made = []
    for number in range(60):
        rare = ("zebra " * (1 + number % 2)) if number % 7 == 0 else "okapi " if number % 11 == 0 else ""
        made.append(Item(number, Modality.TEXT, f"t{number}", f"a {rare}a photo {'of a field ' * (number % 5)}", {},
                         f"h{number}"))
    write_items(tmp_path / "items.sqlite", made)
    return ItemStore(tmp_path / "items.sqlite"), made


def _reference_items(items: list[Item], expression: str) -> list[int]:
    with closing(sqlite3.connect(":memory:")) as memory:
        memory.execute("CREATE VIRTUAL TABLE plain USING fts5(body, tokenize='unicode61 remove_diacritics 2')")
        memory.executemany("INSERT INTO plain (rowid, body) VALUES (?, ?)", [(item.id, item.text) for item in items])
        rows = memory.execute("SELECT rowid, bm25(plain) FROM plain WHERE plain MATCH ?", (expression,)).fetchall()
    return [item_id for item_id, _ in sorted(rows, key=lambda row: (row[1], row[0]))]


def test_words_in_most_items_are_left_out_while_the_rest_find_enough(tmp_path: Path) -> None:
    store, items = _common_word_store(tmp_path)
    query = keywords.compile_query("a zebra or okapi")
    ids, _ = store.keyword_search(query, Modality.TEXT, limit=8)
    # 'a' (in every item) only adds 1e-6-weighted terms: the order is SQLite's over the whole query.
    assert ids.tolist() == _reference_items(items, query.expression)[:8]


def test_a_query_whose_rare_words_find_too_few_is_run_whole(tmp_path: Path) -> None:
    store, items = _common_word_store(tmp_path)
    query = keywords.compile_query("a photo okapi")
    ids, _ = store.keyword_search(query, Modality.TEXT, limit=30)
    # Only five items hold 'okapi': items with just 'a photo' fill the rest, in SQLite's own order.
    assert ids.tolist() == _reference_items(items, query.expression)[:30]
    assert set(ids[:5].tolist()) == {11, 22, 33, 44, 55}


def test_a_bundle_built_before_keyword_search_says_how_to_get_it(tmp_path: Path) -> None:
    path = tmp_path / "items.sqlite"
    write_items(path, _items())
    with closing(sqlite3.connect(path)) as connection:
        connection.execute(f"DROP TABLE {keywords.WORDS_TABLE}")
        connection.execute(f"DROP TABLE {keywords.TRIGRAMS_TABLE}")
        connection.commit()
    with pytest.raises(InvalidQuery) as raised:
        ItemStore(path).keyword_search(keywords.compile_query("red"), Modality.IMAGE)
    assert raised.value.field == "mode" and "indexer compact" in raised.value.reason


def test_the_text_read_from_an_image_is_searched_whatever_the_keyword_fields() -> None:
    read = ocr_metadata("rapidocr", [{"text": "Invoice2024", "box": [], "score": 1.0},
                                     {"text": "seminarfree", "box": [], "score": 1.0, "spaced": "seminar free"}])
    text = keywords.keyword_text("a receipt", {"album": "home", **read}, ("album", "ocr_text"))
    assert text.splitlines() == ["a receipt", "home", "Invoice2024", "seminarfree", "seminar free", "Invoice 2024"]


def test_words_the_recogniser_ran_together_are_found_by_keyword(tmp_path: Path) -> None:
    lines = [{"text": "seminarfree", "box": [], "score": 1.0, "spaced": "seminar free"},
             {"text": "Invoice2024", "box": [], "score": 1.0}]
    made = [Item(0, Modality.IMAGE, "/a.png", None, ocr_metadata("rapidocr", lines[:1]), "h0"),
            Item(1, Modality.IMAGE, "/b.png", None, ocr_metadata("rapidocr", lines[1:]), "h1"),
            Item(2, Modality.IMAGE, "/c.png", "free parking", {}, "h2")]
    write_items(tmp_path / "items.sqlite", made)
    store = ItemStore(tmp_path / "items.sqlite")
    try:
        for query, expected in (("seminar", [0]), ("invoice", [1]), ("2024", [1]), ("free", [0, 2])):
            ids, _ = store.keyword_search(keywords.compile_query(query), Modality.IMAGE, limit=5)
            assert sorted(ids.tolist()) == expected, query
    finally:
        store.close()

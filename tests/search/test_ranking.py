"""Keyword and hybrid text searches through the search service, over a base and its live changes:
BM25 order from SQLite itself, reciprocal rank fusion worked by hand, filters and paging."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from clipsearch.config import DEFAULT_RRF_K
from clipsearch.errors import InvalidQuery
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.hybrid import HYBRID_DEPTH, FusionMethod, Ranking, SearchMode
from clipsearch.search.open import opened_service
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store import keywords
from clipsearch.store.bundle import load_bundle
from clipsearch.store.collection import Hit
from clipsearch.store.compaction import compact
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import ITEMS_FILE, Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from clipsearch.store.manifest import MANIFEST_FILE, FileRecord, read_manifest
from clipsearch.util.files import file_sha256
from tests.support.corpora import make_image_corpus, private_copy, tiny_config

WORDS = ["red", "blue", "bicycle", "car", "tower", "night", "rain", "dog", "sofa", "paris"]
KEYWORD = Ranking(SearchMode.KEYWORD)
HYBRID = Ranking(SearchMode.HYBRID)


def _text(number: int) -> str:
    # Each text holds two or three of the words, some twice, so BM25 has something to rank.
    chosen = [WORDS[number % 10], WORDS[(number * 3 + 1) % 10], WORDS[(number * 7) % 10]]
    return " ".join(chosen[: 2 + number % 2]) + (f" {chosen[0]}" if number % 4 == 0 else "") + f" number {number}"


@pytest.fixture(scope="module")
def base_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keywords")
    make_image_corpus(root / "images", 12)
    lines = [json.dumps({"text": _text(number), "album": "Paris" if number % 3 == 0 else "home", "n": number})
             for number in range(40)]
    lines.append(json.dumps({"text": "我喜欢沙发上的猫", "album": "猫咪", "n": 40}))
    (root / "texts.jsonl").write_text("\n".join(lines) + "\n")
    out = root / "bundle"
    build(tiny_config(out, images=root / "images", texts=root / "texts.jsonl", keyword_fields=("album",)))
    return out


@pytest.fixture()
def live_path(base_path: Path, tmp_path: Path) -> Path:
    return private_copy(base_path, tmp_path)


@pytest.fixture()
def service(encoder: ClipEncoder, live_path: Path) -> Iterator[SearchService]:
    with opened_service(encoder, live_path) as opened:
        yield opened


def _bm25_order(items: list[Item], query: str, fields: tuple[str, ...] = ("album",)) -> list[int]:
    """SQLite's BM25 order of the text items among `items` for `query`, from a plain FTS5 table of
    all of them made here (BM25's statistics are over every item), ties by id."""
    compiled = keywords.compile_query(query)
    with closing(sqlite3.connect(":memory:")) as memory:
        memory.execute("CREATE VIRTUAL TABLE plain USING fts5(body, tokenize='unicode61 remove_diacritics 2')")
        # An item with no words at all (an image without a caption) is no document of the index.
        bodies = [(item.id, keywords.keyword_text(item.text, item.extra, fields)) for item in items]
        memory.executemany("INSERT INTO plain (rowid, body) VALUES (?, ?)", [row for row in bodies if row[1]])
        rows = memory.execute("SELECT rowid, bm25(plain) FROM plain WHERE plain MATCH ?",
                              (compiled.expression,)).fetchall()
    texts = {item.id for item in items if item.modality is Modality.TEXT}
    return [item_id for item_id, _ in sorted(rows, key=lambda row: (row[1], row[0])) if item_id in texts]


def _texts(service: SearchService) -> list[Item]:
    return [item for item in service.bundle.items if item.modality is Modality.TEXT]


def _write(service: SearchService, encoder: ClipEncoder, key: str, text: str, extra: dict[str, object]) -> int:
    assert service.collection.live is not None
    [item_id] = service.collection.live.write([NewItem(key, Modality.TEXT, key, text, extra, f"hash-{key}-{text}",
                                                       encoder.encode_texts([text])[0])])
    return item_id


def test_a_keyword_search_ranks_texts_as_sqlites_bm25(service: SearchService) -> None:
    answer = service.search_text("red bicycle", Modality.TEXT, 20, ranking=KEYWORD)
    expected = _bm25_order(list(service.bundle.items), "red bicycle")
    assert [hit.item.id for hit in answer.hits] == expected[:20]
    assert [hit.ranks for hit in answer.hits] == [{"keyword": rank} for rank in range(1, len(answer.hits) + 1)]
    assert answer.query is None  # nothing was embedded


def test_keyword_fields_are_searched_too(service: SearchService) -> None:
    hits = service.search_text("Paris", Modality.TEXT, 50, ranking=KEYWORD).hits
    assert {hit.item.id for hit in hits} == {item.id for item in _texts(service)
                                            if item.extra.get("album") == "Paris" or "paris" in (item.text or "")}


def test_captions_are_what_images_are_found_by(service: SearchService) -> None:
    hits = service.search_text("picture 9", Modality.IMAGE, 10, ranking=KEYWORD).hits
    assert hits[0].item.text == "caption of picture 9"
    assert all(hit.item.text for hit in hits)  # images without a caption have no words to match


def test_chinese_is_found_in_keyword_mode(service: SearchService) -> None:
    assert [hit.item.text for hit in service.search_text("沙发上", Modality.TEXT, 5, ranking=KEYWORD).hits] == \
        ["我喜欢沙发上的猫"]
    assert [hit.item.text for hit in service.search_text("猫", Modality.TEXT, 5, ranking=KEYWORD).hits] == \
        ["我喜欢沙发上的猫"]


def test_pages_of_a_keyword_search_follow_on_from_each_other(service: SearchService) -> None:
    whole = service.search_text("red car night", Modality.TEXT, 30, ranking=KEYWORD)
    first = service.search_text("red car night", Modality.TEXT, 5, ranking=KEYWORD)
    second = service.search_text("red car night", Modality.TEXT, 5, options=ResultOptions(offset=5), ranking=KEYWORD)
    assert [hit.item.id for hit in first.hits + second.hits] == [hit.item.id for hit in whole.hits[:10]]
    assert len(whole.hits) > 10 and first.more and second.more and not whole.more


def test_a_filter_restricts_keyword_results_and_ranks_within_them(service: SearchService) -> None:
    raw = {"key": "n", "range": {"lt": 20}}
    answer = service.search_text("dog sofa", Modality.TEXT, 30, ranking=KEYWORD,
                                 options=ResultOptions(filter=parse_filter(raw)))
    # BM25's statistics are the whole collection's: the filter only removes rows from the ranking.
    expected = [item_id for item_id in _bm25_order(list(service.bundle.items), "dog sofa") if item_id - 12 < 20]
    assert [hit.item.id for hit in answer.hits] == expected and answer.matched == 20


def test_live_writes_and_deletes_are_searched_by_keyword(service: SearchService, encoder: ClipEncoder) -> None:
    added = _write(service, encoder, "new", "a zeppelin over paris", {"album": "travel"})
    assert [hit.item.id for hit in service.search_text("zeppelin", Modality.TEXT, 5, ranking=KEYWORD).hits] == [added]
    victim = _bm25_order(list(service.bundle.items), "tower")[0]
    assert service.collection.live is not None
    service.collection.live.delete([victim])
    assert victim not in [hit.item.id for hit in service.search_text("tower", Modality.TEXT, 50, ranking=KEYWORD).hits]


def test_an_edited_text_is_found_by_its_new_words_only(service: SearchService, encoder: ClipEncoder) -> None:
    edited = _texts(service)[0]
    assert _write(service, encoder, edited.uri, "a lighthouse", {}) == edited.id
    assert [hit.item.id for hit in service.search_text("lighthouse", Modality.TEXT, 5, ranking=KEYWORD).hits] == \
        [edited.id]
    old_word = (edited.text or "").split()[0]
    assert edited.id not in [hit.item.id for hit in
                             service.search_text(old_word, Modality.TEXT, 50, ranking=KEYWORD).hits]


def test_a_hybrid_search_is_the_rrf_of_the_vector_and_keyword_rankings(service: SearchService) -> None:
    text = "blue tower rain"
    vector = service.search_text(text, Modality.TEXT, HYBRID_DEPTH)
    by_words = service.search_text(text, Modality.TEXT, HYBRID_DEPTH, ranking=KEYWORD)
    expected: dict[int, float] = {}
    for answer in (vector, by_words):
        for rank, hit in enumerate(answer.hits, 1):
            expected[hit.item.id] = expected.get(hit.item.id, 0.0) + 1 / (60 + rank)
    hybrid = service.search_text(text, Modality.TEXT, 10, ranking=HYBRID)
    best = sorted(expected, key=lambda item_id: (-expected[item_id], item_id))[:10]
    assert [hit.item.id for hit in hybrid.hits] == best
    assert [hit.score for hit in hybrid.hits] == pytest.approx([expected[item_id] for item_id in best])
    vector_rank = {hit.item.id: rank for rank, hit in enumerate(vector.hits, 1)}
    assert all(hit.ranks is not None and hit.ranks.get("vector") == vector_rank.get(hit.item.id)
               for hit in hybrid.hits)
    assert hybrid.query is not None  # the vector part embedded the text


def test_pages_of_a_hybrid_search_follow_on_and_take_a_filter(service: SearchService) -> None:
    only = parse_filter({"key": "n", "range": {"gte": 10}})
    whole = service.search_text("blue car", Modality.TEXT, 12, options=ResultOptions(filter=only), ranking=HYBRID)
    pages = [service.search_text("blue car", Modality.TEXT, 4, options=ResultOptions(filter=only, offset=offset),
                                 ranking=HYBRID) for offset in (0, 4, 8)]
    assert [hit.item.id for page in pages for hit in page.hits] == [hit.item.id for hit in whole.hits]
    assert all(hit.item.extra["n"] >= 10 for hit in whole.hits) and whole.matched == 31


def test_weighted_hybrid_with_all_weight_on_vectors_keeps_the_vector_order(service: SearchService) -> None:
    vector = service.search_text("red night", Modality.TEXT, 10)
    hybrid = service.search_text("red night", Modality.TEXT, 10,
                                 ranking=Ranking(SearchMode.HYBRID, FusionMethod.WEIGHTED, vector_weight=1.0))
    assert [hit.item.id for hit in hybrid.hits] == [hit.item.id for hit in vector.hits]


def fused_by_hand(vector: list[Hit], words: list[Hit], ranking: Ranking, rrf_k: int = DEFAULT_RRF_K) -> list[int]:
    """The fused order worked out plainly, best first (ties by id): reciprocal rank fusion adds
    weight / (k + rank) from each list; weighted fusion adds weight × the score min-max scaled
    within its list (1 where a list's scores are all equal)."""
    def contributions(hits: list[Hit]) -> dict[int, float]:
        if ranking.method is FusionMethod.RRF:
            return {hit.item.id: 1 / (rrf_k + rank) for rank, hit in enumerate(hits, 1)}
        low, high = min(hit.score for hit in hits), max(hit.score for hit in hits)
        return {hit.item.id: 1.0 if high == low else (hit.score - low) / (high - low) for hit in hits}

    total: dict[int, float] = {}
    for weight, hits in ((ranking.vector_weight, vector), (1 - ranking.vector_weight, words)):
        for item_id, value in contributions(hits).items():
            total[item_id] = total.get(item_id, 0.0) + weight * value
    return sorted(total, key=lambda item_id: (-total[item_id], item_id))


@pytest.mark.parametrize("ranking", [Ranking(SearchMode.HYBRID, FusionMethod.WEIGHTED, 0.3),
                                     Ranking(SearchMode.HYBRID, FusionMethod.RRF, 0.5)])
def test_a_hybrid_search_fuses_both_rankings_as_worked_out_by_hand(service: SearchService, ranking: Ranking) -> None:
    text = "car paris"
    vector = service.search_text(text, Modality.TEXT, HYBRID_DEPTH)
    words = service.search_text(text, Modality.TEXT, HYBRID_DEPTH, ranking=KEYWORD)
    hybrid = service.search_text(text, Modality.TEXT, 10, ranking=ranking)
    assert [hit.item.id for hit in hybrid.hits] == fused_by_hand(vector.hits, words.hits, ranking)[:10]


def test_a_text_without_words_is_refused_in_keyword_mode_by_field(service: SearchService) -> None:
    with pytest.raises(InvalidQuery) as raised:
        service.search_text("!!!", Modality.TEXT, 5, ranking=KEYWORD)
    assert raised.value.field == "text"


def test_a_compaction_folds_live_items_into_the_bases_keyword_index(encoder: ClipEncoder, live_path: Path) -> None:
    bundle = load_bundle(live_path)
    log = LiveLog(live_path / LIVE_FILE, bundle.items, encoder.embedding_dim)
    service = SearchService(encoder, bundle, live=log)
    try:
        _write(service, encoder, "added", "red zeppelin over the tower", {"album": "Paris"})
        log.delete([_texts(service)[1].id])
    finally:
        service.close()
        bundle.close()
    compact(live_path)
    compacted = load_bundle(live_path)
    try:
        texts = [item for item in compacted.items if item.modality is Modality.TEXT]
        ids, _ = compacted.items.keyword_search(keywords.compile_query("red tower paris"), Modality.TEXT, limit=100)
        assert ids.tolist() == _bm25_order(list(compacted.items), "red tower paris")
        assert any(item.text == "red zeppelin over the tower" for item in texts)
    finally:
        compacted.close()


def _as_written_before(live_path: Path, tables: tuple[str, ...]) -> None:
    """Drop `tables` from the bundle's items.sqlite and record its new checksum, as a bundle written
    before them would be."""
    items = live_path / ITEMS_FILE
    with closing(sqlite3.connect(items)) as connection:
        for table in tables:
            connection.execute(f"DROP TABLE {table}")
        connection.commit()
        connection.execute("VACUUM")
    manifest = read_manifest(live_path)
    record = FileRecord(sha256=file_sha256(items), bytes=items.stat().st_size)
    (live_path / MANIFEST_FILE).write_text(replace(manifest, files={**manifest.files, ITEMS_FILE: record}).to_json())


def test_compacting_a_bundle_from_before_keyword_search_adds_its_keyword_tables(live_path: Path) -> None:
    _as_written_before(live_path, (keywords.VOCABULARY_TABLE, keywords.WORDS_TABLE, keywords.TRIGRAMS_TABLE,
                                   keywords.BIGRAMS_VOCABULARY_TABLE, keywords.BIGRAMS_TABLE))
    old = load_bundle(live_path)
    try:
        with pytest.raises(InvalidQuery, match="indexer compact"):
            old.items.keyword_search(keywords.compile_query("red"), Modality.TEXT)
    finally:
        old.close()
    summary = compact(live_path)
    assert summary is not None and summary.keyword_tables_added and "keyword tables" in summary.describe()
    upgraded = load_bundle(live_path)  # checksums verified
    try:
        ids, _ = upgraded.items.keyword_search(keywords.compile_query("red bicycle"), Modality.TEXT, limit=100)
        assert ids.tolist() == _bm25_order(list(upgraded.items), "red bicycle")
    finally:
        upgraded.close()
    again = compact(live_path)
    assert again is not None and not again.keyword_tables_added


def test_a_bundle_from_before_the_bigrams_table_finds_chinese_until_a_compaction_adds_it(
        live_path: Path, encoder: ClipEncoder) -> None:
    _as_written_before(live_path, (keywords.BIGRAMS_VOCABULARY_TABLE, keywords.BIGRAMS_TABLE))
    with opened_service(encoder, live_path) as old:
        assert [hit.item.text for hit in old.search_text("猫", Modality.TEXT, 5, ranking=KEYWORD).hits] == \
            ["我喜欢沙发上的猫"]  # by the trigram table's scan
        assert not old.bundle.items.has_keyword_tables()
    summary = compact(live_path)
    assert summary is not None and summary.keyword_tables_added
    with opened_service(encoder, live_path) as upgraded:
        assert upgraded.bundle.items.has_keyword_tables()
        assert [hit.item.text for hit in upgraded.search_text("猫咪 沙发", Modality.TEXT, 5, ranking=KEYWORD).hits] == \
            ["我喜欢沙发上的猫"]  # 沙发 in its text, 猫咪 in its album: both through the index

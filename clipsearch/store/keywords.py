"""Keyword search: SQLite FTS5 with BM25 over captions, texts and chosen metadata fields.

Each item's keyword text (its caption or text, then the values of the collection's keyword fields,
one per line) goes into three FTS5 tables of the same database as the items:

    keywords_words     tokenizer unicode61, diacritics folded: words of scripts written with spaces
    keywords_bigrams   the same tokenizer over the text with every run of a script written without
                       spaces (Chinese, Japanese, Thai, …) cut into its single characters and its
                       overlapping pairs (红色圆形 → 红 色 圆 形 红色 色圆 圆形), as Lucene's CJK
                       analyzer does; words of other scripts stay whole. Most Chinese words are
                       one or two characters (猫, 红色, 左边), so every word, and every longer word
                       through its pairs, is matched through the index and ranked by BM25; a query
                       mixing scripts ("红色 car") is one query of this table.
    keywords_trigrams  tokenizer trigram: every three characters in a row. What bundles written
                       before the bigrams table searched scripts without spaces with; they still do
                       (a compaction adds the bigrams table), and a query of one or two such
                       characters scans their stored text.

A query holding a character of a script written without spaces searches the bigrams table (its
runs cut into pairs, or one character alone), any other the words table. Its terms are OR'ed, so
BM25 ranks items that hold more of them, and rarer ones, first.

Common words cost the most and count the least: every item holding "a" or "photo" matches, and
SQLite scores each match before it can sort. BM25 weighs a word found in more than half the items
at 1e-6 (SQLite clamps its IDF there), so such a word moves a score by at most 2.2e-6 (1e-6 ×
(k1 + 1)). The words table's vocabulary (`keywords_words_terms`, fts5vocab) gives each word's
document count, and a query is first run without its common words; only when that finds fewer
than the items asked for is it run again whole. Results are SQLite's own order, except among
items whose scores lie within 2.2e-6 per common word of each other. The same holds for
the bigrams table's terms, by its own vocabulary. In a bundle without the bigrams table, a query
whose runs are all shorter than three characters (one or two Chinese characters, say) cannot use
trigrams: the trigram table's stored text is then scanned for its longest run, and items rank by
how often they hold it (ties by id).

Scores are SQLite's own `bm25()` negated, so that higher is better, as with cosines. A snapshot's
live items (clipsearch.store.live) have keyword tables of their own, in memory, and are scored against
their own statistics until a compaction folds them into the base, as Elasticsearch scores each
shard against its own.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.store.ocr_text import OCR_TEXT, keyword_body
from clipsearch.store.scripts import WORD, is_unspaced

WORDS_TABLE = "keywords_words"
TRIGRAMS_TABLE = "keywords_trigrams"
BIGRAMS_TABLE = "keywords_bigrams"

VOCABULARY_TABLE = "keywords_words_terms"
BIGRAMS_VOCABULARY_TABLE = "keywords_bigrams_terms"
VOCABULARIES = {WORDS_TABLE: VOCABULARY_TABLE, BIGRAMS_TABLE: BIGRAMS_VOCABULARY_TABLE}

_WORD_TABLES = f"""
CREATE VIRTUAL TABLE {WORDS_TABLE} USING fts5(body, content='', tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE {TRIGRAMS_TABLE} USING fts5(body, tokenize='trigram');
CREATE VIRTUAL TABLE {VOCABULARY_TABLE} USING fts5vocab({WORDS_TABLE}, 'row');
"""
_BIGRAM_TABLES = f"""
CREATE VIRTUAL TABLE {BIGRAMS_TABLE} USING fts5(body, content='', tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE {BIGRAMS_VOCABULARY_TABLE} USING fts5vocab({BIGRAMS_TABLE}, 'row');
"""
SCHEMA = _WORD_TABLES + _BIGRAM_TABLES
"""Words and bigrams need no stored text (BM25 reads only the index); trigrams keep theirs for the
scan of queries too short for trigrams."""

MAX_QUERY_WORDS = 64
"""Most words of one query that are looked for (the rest are ignored)."""
TRIGRAM = 3



@dataclass(frozen=True)
class KeywordQuery:
    """A query compiled for one table: an FTS5 MATCH expression, or (`scan`) a substring to count."""

    table: str
    expression: str
    scan: bool = False
    words: tuple[str, ...] = ()
    """The terms OR'ed in `expression` (words and bigrams tables)."""
    fallback: KeywordQuery | None = None
    """The same query for a bundle written before the bigrams table (trigrams, or a scan)."""

    def without(self, dropped: set[str]) -> KeywordQuery:
        kept = tuple(word for word in self.words if word not in dropped)
        return KeywordQuery(self.table, _any_of(kept), words=kept, fallback=self.fallback)


def compile_query(text: str, field: str = "text") -> KeywordQuery:
    """The keyword query for `text`; InvalidQuery naming `field` when it holds no word at all."""
    words = list(dict.fromkeys(word.lower() for word in WORD.findall(text)))[:MAX_QUERY_WORDS]
    if not words:
        raise InvalidQuery(field, "holds no letters or digits to search for by keyword")
    if not any(is_unspaced(character) for word in words for character in word):
        return KeywordQuery(WORDS_TABLE, _any_of(words), words=tuple(words))
    terms = tuple(dict.fromkeys(term for word in words for term in _query_terms(word)))[:MAX_QUERY_WORDS]
    return KeywordQuery(BIGRAMS_TABLE, _any_of(terms), words=terms, fallback=_trigram_query(words))


def _trigram_query(words: list[str]) -> KeywordQuery:
    long_enough = [word for word in words if len(word) >= TRIGRAM]
    if long_enough:
        return KeywordQuery(TRIGRAMS_TABLE, _any_of(long_enough))
    return KeywordQuery(TRIGRAMS_TABLE, max(words, key=len), scan=True)


def segmented(text: str) -> str:
    """`text` as the bigrams table indexes it: each run of characters of a script written without
    spaces replaced by its single characters and its overlapping pairs, the rest as it is."""
    return "".join(_spaced_grams(run) if unspaced else run for unspaced, run in _runs(text))


def _query_terms(word: str) -> list[str]:
    """The bigrams table's terms for one query word: a run of one unspaced character is that
    character, a longer run its overlapping pairs; letters of other scripts stay one term."""
    terms = []
    for unspaced, run in _runs(word):
        if not unspaced or len(run) == 1:
            terms.append(run)
        else:
            terms.extend(run[start:start + 2] for start in range(len(run) - 1))
    return terms


def _runs(text: str) -> list[tuple[bool, str]]:
    """`text` cut where it passes between a script written without spaces and any other character."""
    return [(unspaced, "".join(run)) for unspaced, run in itertools.groupby(text, key=is_unspaced)]


def _spaced_grams(run: str) -> str:
    singles = " ".join(run)
    pairs = " ".join(run[start:start + 2] for start in range(len(run) - 1))
    return f" {singles} {pairs} " if pairs else f" {singles} "


def keyword_text(text: str | None, extra: dict[str, Any], fields: Sequence[str]) -> str:
    """What of an item is searched by keyword: its caption or text, then its `fields` metadata values
    (strings and numbers, and those inside lists), one per line, then the text read from its image
    (clipsearch.store.ocr_text), whatever the fields."""
    lines = [text] if text else []
    for name in fields:
        if name != OCR_TEXT:
            lines.extend(_values(extra.get(name)))
    read = keyword_body(extra)
    if read:
        lines.append(read)
    return "\n".join(lines)


def create_tables(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)


def has_tables(connection: sqlite3.Connection) -> bool:
    """Whether keyword search is possible here (bundles written before it have no tables)."""
    return _count_tables(connection, WORDS_TABLE, TRIGRAMS_TABLE, VOCABULARY_TABLE) == 3


def has_bigrams(connection: sqlite3.Connection) -> bool:
    """Whether the tables are the current ones, the bigrams table included."""
    return _count_tables(connection, BIGRAMS_TABLE, BIGRAMS_VOCABULARY_TABLE) == 2


def _count_tables(connection: sqlite3.Connection, *names: str) -> int:
    placeholders = ", ".join("?" * len(names))
    return int(connection.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN ({placeholders})",
                                  names).fetchone()[0])


def index_items(connection: sqlite3.Connection, rows: Iterable[tuple[int, str | None, str]],
                fields: Sequence[str]) -> None:
    """Put items, given as (id, text, extra JSON) rows, into the keyword tables."""
    bodies = [(item_id, keyword_text(text, json.loads(extra), fields)) for item_id, text, extra in rows]
    for table in (WORDS_TABLE, TRIGRAMS_TABLE):
        connection.executemany(f"INSERT INTO {table} (rowid, body) VALUES (?, ?)",
                               ((item_id, body) for item_id, body in bodies if body))
    connection.executemany(f"INSERT INTO {BIGRAMS_TABLE} (rowid, body) VALUES (?, ?)",
                           ((item_id, segmented(body)) for item_id, body in bodies if body))


def search(connection: sqlite3.Connection, query: KeywordQuery, modality: Modality, condition: str = "1",
           params: Sequence[Any] = (), limit: int = 10, documents: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best `limit` items of `modality` for `query` among those where the SQL `condition` on the
    items table holds: ids (int64) and scores (float32, higher is better), best first. Common words
    are left out first (see the module's docstring); `documents`, the words table's row count, may
    be given by a caller that keeps it. A bundle written before the bigrams table is searched with
    the query's fallback."""
    if query.table == BIGRAMS_TABLE and query.fallback is not None and not has_bigrams(connection):
        query = query.fallback
    common = _common_words(connection, query, documents)
    if common and len(common) < len(query.words):
        found = _search(connection, query.without(common), modality, condition, params, limit)
        if len(found[0]) >= limit:
            return found
    return _search(connection, query, modality, condition, params, limit)


def document_count(connection: sqlite3.Connection) -> int:
    return int(connection.execute(f"SELECT count(*) FROM {WORDS_TABLE}").fetchone()[0])


def _common_words(connection: sqlite3.Connection, query: KeywordQuery, documents: int | None) -> set[str]:
    """The query's terms found in more than half the items (SQLite's BM25 weighs them at 1e-6)."""
    if len(query.words) < 2 or query.table not in VOCABULARIES:
        return set()
    documents = document_count(connection) if documents is None else documents
    common = set()
    for word in query.words:
        row = connection.execute(f"SELECT doc FROM {VOCABULARIES[query.table]} WHERE term = ?", (word,)).fetchone()
        if row is not None and 2 * int(row[0]) > documents:
            common.add(word)
    return common


def _search(connection: sqlite3.Connection, query: KeywordQuery, modality: Modality, condition: str,
            params: Sequence[Any], limit: int) -> tuple[np.ndarray, np.ndarray]:
    table = query.table
    bound: tuple[str, ...]
    if query.scan:
        score = f"(length({table}.body) - length(replace({table}.body, ?, ''))) / {len(query.expression)}"
        match, bound = f"instr({table}.body, ?) > 0", (query.expression, query.expression)
    else:
        score, match, bound = f"-bm25({table})", f"{table} MATCH ?", (query.expression,)
    rows = connection.execute(
        f"SELECT items.id, {score} AS score FROM {table} JOIN items ON items.id = {table}.rowid "
        f"WHERE {match} AND items.modality = ? AND ({condition}) ORDER BY score DESC, items.id LIMIT ?",
        (*bound, modality.value, *params, limit)).fetchall()
    return (np.array([row[0] for row in rows], dtype=np.int64),
            np.array([row[1] for row in rows], dtype=np.float32))


def _any_of(words: Sequence[str]) -> str:
    return " OR ".join(f'"{word}"' for word in words)


def _values(value: Any) -> list[str]:
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        return []
    if isinstance(value, str | int | float):
        return [str(value)]
    if isinstance(value, list):
        return [text for member in value for text in _values(member)]
    return []

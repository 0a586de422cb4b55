"""Keyword search: SQLite FTS5 with BM25 over captions, texts and chosen metadata fields.

Each item's keyword text (its caption or text, then the values of the collection's keyword fields,
one per line) goes into two FTS5 tables of the same database as the items:

    keywords_words     tokenizer unicode61, diacritics folded: words of scripts written with spaces
    keywords_trigrams  tokenizer trigram: every three characters in a row. Chinese, Japanese and
                       Thai are written without spaces, so unicode61 would make one token of a
                       whole sentence and a query word would never match it; trigrams match any
                       substring of three characters or more.

A query holding a character of a script written without spaces searches the trigram table, any
other the words table. Its words (runs of letters and digits) are OR'ed, so BM25 ranks items that
hold more of them, and rarer ones, first.

Common words cost the most and count the least: every item holding "a" or "photo" matches, and
SQLite scores each match before it can sort. BM25 weighs a word found in more than half the items
at 1e-6 (SQLite clamps its IDF there), so such a word moves a score by at most 2.2e-6 (1e-6 ×
(k1 + 1)). The words table's vocabulary (`keywords_words_terms`, fts5vocab) gives each word's
document count, and a query is first run without its common words; only when that finds fewer
than the items asked for is it run again whole. Results are SQLite's own order, except among
items whose scores lie within 2.2e-6 per common word of each other. A query whose runs are all shorter than three
characters (one or two Chinese characters, say) cannot use trigrams: the trigram table's stored
text is then scanned for its longest run, and items rank by how often they hold it (ties by id).

Scores are SQLite's own `bm25()` negated, so that higher is better, as with cosines. A snapshot's
live items (clipsearch.store.live) have keyword tables of their own, in memory, and are scored against
their own statistics until a compaction folds them into the base, as Elasticsearch scores each
shard against its own.
"""

from __future__ import annotations

import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality

WORDS_TABLE = "keywords_words"
TRIGRAMS_TABLE = "keywords_trigrams"

VOCABULARY_TABLE = "keywords_words_terms"

SCHEMA = f"""
CREATE VIRTUAL TABLE {WORDS_TABLE} USING fts5(body, content='', tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE {TRIGRAMS_TABLE} USING fts5(body, tokenize='trigram');
CREATE VIRTUAL TABLE {VOCABULARY_TABLE} USING fts5vocab({WORDS_TABLE}, 'row');
"""
"""Words need no stored text (BM25 reads only the index); trigrams keep theirs for the scan of
queries too short for trigrams."""

MAX_QUERY_WORDS = 64
"""Most words of one query that are looked for (the rest are ignored)."""
TRIGRAM = 3

_WORD = re.compile(r"\w+")
_UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


@dataclass(frozen=True)
class KeywordQuery:
    """A query compiled for one table: an FTS5 MATCH expression, or (`scan`) a substring to count."""

    table: str
    expression: str
    scan: bool = False
    words: tuple[str, ...] = ()
    """The words OR'ed in `expression` (words table only)."""

    def without(self, dropped: set[str]) -> KeywordQuery:
        kept = tuple(word for word in self.words if word not in dropped)
        return KeywordQuery(self.table, _any_of(kept), words=kept)


def compile_query(text: str, field: str = "text") -> KeywordQuery:
    """The keyword query for `text`; InvalidQuery naming `field` when it holds no word at all."""
    words = list(dict.fromkeys(word.lower() for word in _WORD.findall(text)))[:MAX_QUERY_WORDS]
    if not words:
        raise InvalidQuery(field, "holds no letters or digits to search for by keyword")
    if not any(_is_unspaced(character) for word in words for character in word):
        return KeywordQuery(WORDS_TABLE, _any_of(words), words=tuple(words))
    long_enough = [word for word in words if len(word) >= TRIGRAM]
    if long_enough:
        return KeywordQuery(TRIGRAMS_TABLE, _any_of(long_enough))
    return KeywordQuery(TRIGRAMS_TABLE, max(words, key=len), scan=True)


def keyword_text(text: str | None, extra: dict[str, Any], fields: Sequence[str]) -> str:
    """What of an item is searched by keyword: its caption or text, then its `fields` metadata values
    (strings and numbers, and those inside lists), one per line."""
    lines = [text] if text else []
    for name in fields:
        lines.extend(_values(extra.get(name)))
    return "\n".join(lines)


def create_tables(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)


def has_tables(connection: sqlite3.Connection) -> bool:
    found = connection.execute("SELECT count(*) FROM sqlite_master WHERE name IN (?, ?, ?)",
                               (WORDS_TABLE, TRIGRAMS_TABLE, VOCABULARY_TABLE)).fetchone()
    return int(found[0]) == 3


def index_items(connection: sqlite3.Connection, rows: Iterable[tuple[int, str | None, str]],
                fields: Sequence[str]) -> None:
    """Put items, given as (id, text, extra JSON) rows, into both keyword tables."""
    bodies = [(item_id, keyword_text(text, json.loads(extra), fields)) for item_id, text, extra in rows]
    for table in (WORDS_TABLE, TRIGRAMS_TABLE):
        connection.executemany(f"INSERT INTO {table} (rowid, body) VALUES (?, ?)",
                               ((item_id, body) for item_id, body in bodies if body))


def search(connection: sqlite3.Connection, query: KeywordQuery, modality: Modality, condition: str = "1",
           params: Sequence[Any] = (), limit: int = 10, documents: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best `limit` items of `modality` for `query` among those where the SQL `condition` on the
    items table holds: ids (int64) and scores (float32, higher is better), best first. Common words
    are left out first (see the module's docstring); `documents`, the words table's row count, may
    be given by a caller that keeps it."""
    common = _common_words(connection, query, documents)
    if common and len(common) < len(query.words):
        found = _search(connection, query.without(common), modality, condition, params, limit)
        if len(found[0]) >= limit:
            return found
    return _search(connection, query, modality, condition, params, limit)


def document_count(connection: sqlite3.Connection) -> int:
    return int(connection.execute(f"SELECT count(*) FROM {WORDS_TABLE}").fetchone()[0])


def _common_words(connection: sqlite3.Connection, query: KeywordQuery, documents: int | None) -> set[str]:
    """The query's words found in more than half the items (SQLite's BM25 weighs them at 1e-6)."""
    if len(query.words) < 2:
        return set()
    documents = document_count(connection) if documents is None else documents
    common = set()
    for word in query.words:
        row = connection.execute(f"SELECT doc FROM {VOCABULARY_TABLE} WHERE term = ?", (word,)).fetchone()
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


def _is_unspaced(character: str) -> bool:
    return ord(character) > 0x7F and unicodedata.name(character, "").startswith(_UNSPACED_SCRIPTS)


def _values(value: Any) -> list[str]:
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        return []
    if isinstance(value, str | int | float):
        return [str(value)]
    if isinstance(value, list):
        return [text for member in value for text in _values(member)]
    return []

"""Filters over item fields and metadata, in the manner of Qdrant's filter JSON, compiled to SQL once.

    {"must": [{"key": "album", "match": {"value": "Paris"}},
              {"key": "year", "range": {"gte": 2020}}],
     "must_not": [{"key": "caption", "exists": true}]}

A filter is a condition or a clause object. A clause object holds `must` (all of), `should` (at
least one of) and `must_not` (none of), each a list of conditions or nested clause objects. A
condition names a `key` and tests it with one of:

    match: {"value": v}     equal to v (a string, number or boolean)
    match: {"any": [v…]}    equal to one of them (SQL's IN)
    match: {"prefix": "s"}  a string that starts with s
    match: {"text": "s"}    a string that holds every word of s, case aside: a word where it stands
                            with no letter on either side, a word of a script written without
                            spaces (Chinese…) anywhere (as Qdrant's full-text match; for the
                            text read from images, `{"key": "ocr_text", "match": {"text": "invoice"}}`)
    range: {"gt"|"gte"|"lt"|"lte": v}   numbers against numbers, strings against strings
                            (ISO dates compare as dates)
    exists: true | false    present and not null (an empty list counts as absent)

Keys: `id`, `modality`, `uri`, `caption` (an image's) and `text` (a text item's) are the item's own
fields. Any other key is a metadata key, dots going into nested objects (`exif.year`);
`metadata.NAME` always means the metadata key, even one named like an item field. A metadata
value that is a list matches when any of its elements does, so `{"key": "labels", "match":
{"value": "beach"}}` finds items labelled beach among others. Types never mix: "2020" does not
equal 2020, and true does not equal 1.

Every error names the path inside the filter that is wrong (`filter.must[1].range.gte`). Values
reach SQLite only as bound parameters, never as SQL text. `match.text` calls a function of this
module from SQL: a connection that runs filters gets it from `add_functions`.
"""

from __future__ import annotations

import json
import math
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipsearch.errors import InvalidQuery
from clipsearch.store.scripts import WORD, holds

MAX_CONDITIONS = 64
"""Most conditions (leaves) in one filter."""
MAX_DEPTH = 8
"""Deepest nesting of clause objects."""
MAX_VALUES = 1024
"""Most values in one `match.any`."""
MAX_STRING_CHARS = 1024
"""Longest key or string value."""
MAX_TEXT_WORDS = 32
"""Most words of one `match.text`."""
MATCHES = ("value", "any", "prefix", "text")

ITEM_FIELDS = ("id", "modality", "uri", "caption", "text")
METADATA_PREFIX = "metadata."
CLAUSES = ("must", "should", "must_not")
_NUMBER_TYPES = "('integer', 'real')"

Scalar = str | int | float | bool

HOLDS_FUNCTION = "clipsearch_holds"
"""The SQL function of `match.text`: clipsearch_holds(text, word)."""


def add_functions(connection: sqlite3.Connection) -> None:
    """Give `connection` the SQL function filters call (`match.text`)."""
    connection.create_function(HOLDS_FUNCTION, 2, _holds, deterministic=True)


def _holds(text: Any, word: Any) -> bool:
    return isinstance(text, str) and isinstance(word, str) and holds(text, word)


@dataclass(frozen=True)
class Filter:
    """A checked filter: its SQL condition over the items table, and the parameters it binds.

    `canonical` is the filter as sorted JSON: equal filters have equal canonical forms, which is
    what caches of matching items are keyed by.
    """

    canonical: str
    sql: str
    params: tuple[Any, ...]


def parse_filter(raw: Any, field: str = "filter") -> Filter:
    """Check a filter (decoded JSON) and compile it; an InvalidQuery names the path that is wrong."""
    compiler = _Compiler()
    sql = compiler.node(raw, field, depth=0)
    return Filter(json.dumps(raw, sort_keys=True, ensure_ascii=False), sql, tuple(compiler.params))


def both(first: Filter | None, second: Filter | None) -> Filter | None:
    """The items that pass both filters (None: no condition), as {"must": [first, second]} would."""
    if first is None or second is None:
        return first if second is None else second
    canonical = json.dumps({"must": [json.loads(first.canonical), json.loads(second.canonical)]}, sort_keys=True,
                           ensure_ascii=False)
    return Filter(canonical, f"({first.sql}) AND ({second.sql})", first.params + second.params)


class _Compiler:
    def __init__(self) -> None:
        self.params: list[Any] = []
        self.conditions = 0

    def node(self, raw: Any, path: str, depth: int) -> str:
        if not isinstance(raw, dict):
            raise InvalidQuery(path, "must be an object: a condition with 'key', or clauses "
                                     "('must', 'should', 'must_not')")
        return self.condition(raw, path) if "key" in raw else self.clauses(raw, path, depth)

    def clauses(self, raw: dict[str, Any], path: str, depth: int) -> str:
        if depth >= MAX_DEPTH:
            raise InvalidQuery(path, f"nested more than {MAX_DEPTH} levels deep")
        unknown = [name for name in raw if name not in CLAUSES]
        if unknown:
            raise InvalidQuery(f"{path}.{unknown[0]}", "unknown clause; use 'must', 'should' or 'must_not' "
                                                       "(or give a condition with 'key')")
        if not raw:
            raise InvalidQuery(path, "give at least one of 'must', 'should' and 'must_not'")
        parts = []
        for name in CLAUSES:
            if name not in raw:
                continue
            members = raw[name]
            if not isinstance(members, list) or not members:
                raise InvalidQuery(f"{path}.{name}", "must be a non-empty list of conditions")
            compiled = [self.node(member, f"{path}.{name}[{number}]", depth + 1)
                        for number, member in enumerate(members)]
            if name == "must":
                parts.append(" AND ".join(compiled))
            elif name == "should":
                parts.append(" OR ".join(compiled))
            else:
                parts.append("NOT (" + " OR ".join(compiled) + ")")
        return "(" + " AND ".join(f"({part})" for part in parts) + ")"

    def condition(self, raw: dict[str, Any], path: str) -> str:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InvalidQuery(path, f"a filter may hold at most {MAX_CONDITIONS} conditions")
        key = raw["key"]
        if not isinstance(key, str) or not key.strip():
            raise InvalidQuery(f"{path}.key", "must be a non-empty string")
        _check_string(key, f"{path}.key")
        tests = [name for name in raw if name != "key"]
        unknown = [name for name in tests if name not in ("match", "range", "exists")]
        if unknown:
            raise InvalidQuery(f"{path}.{unknown[0]}", "unknown test; use 'match', 'range' or 'exists'")
        if len(tests) != 1:
            raise InvalidQuery(path, "give exactly one of 'match', 'range' and 'exists' beside 'key'")
        test = tests[0]
        target = _target(key, f"{path}.key")
        if test == "exists":
            if not isinstance(raw["exists"], bool):
                raise InvalidQuery(f"{path}.exists", "must be true or false")
            sql = target.exists(self)
            return sql if raw["exists"] else f"NOT {sql}"
        if test == "match":
            return self.match(target, raw["match"], f"{path}.match")
        return self.range(target, raw["range"], f"{path}.range")

    def match(self, target: _Target, raw: Any, path: str) -> str:
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in MATCHES:
            raise InvalidQuery(path, "must be an object with exactly one of 'value', 'any', 'prefix' and 'text'")
        kind, given = next(iter(raw.items()))
        if kind == "value":
            value = _scalar(given, f"{path}.value")
            return target.test(self, lambda column: self.equals(column, value, target, f"{path}.value"))
        if kind == "any":
            if not isinstance(given, list) or not given:
                raise InvalidQuery(f"{path}.any", "must be a non-empty list of values")
            if len(given) > MAX_VALUES:
                raise InvalidQuery(f"{path}.any", f"at most {MAX_VALUES} values, got {len(given)}")
            values = [_scalar(value, f"{path}.any[{number}]") for number, value in enumerate(given)]

            def any_of(column: _Column) -> str:
                return "(" + " OR ".join(self.equals(column, value, target, f"{path}.any[{number}]")
                                         for number, value in enumerate(values)) + ")"
            return target.test(self, any_of)
        if not isinstance(given, str) or not given:
            raise InvalidQuery(f"{path}.{kind}", "must be a non-empty string")
        _check_string(given, f"{path}.{kind}")
        target.require("string", f"{path}.{kind}")
        if kind == "text":
            return self.text(target, given, f"{path}.text")
        return target.test(self, lambda column: f"({column.is_text} AND substr({column.value}, 1, "
                                                 f"{self.bind(len(given))}) = {self.bind(given)})")

    def text(self, target: _Target, given: str, path: str) -> str:
        words = list(dict.fromkeys(word.lower() for word in WORD.findall(given)))
        if not words:
            raise InvalidQuery(path, "holds no letters or digits to look for")
        if len(words) > MAX_TEXT_WORDS:
            raise InvalidQuery(path, f"at most {MAX_TEXT_WORDS} words, got {len(words)}")
        return target.test(self, lambda column: "(" + " AND ".join(
            [column.is_text, *(f"{HOLDS_FUNCTION}({column.value}, {self.bind(word)})" for word in words)]) + ")")

    def range(self, target: _Target, raw: Any, path: str) -> str:
        bounds = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        if not isinstance(raw, dict) or not raw:
            raise InvalidQuery(path, "must be an object with some of 'gt', 'gte', 'lt' and 'lte'")
        unknown = [name for name in raw if name not in bounds]
        if unknown:
            raise InvalidQuery(f"{path}.{unknown[0]}", "unknown bound; use 'gt', 'gte', 'lt' or 'lte'")
        for lower, upper in (("gt", "gte"), ("lt", "lte")):
            if lower in raw and upper in raw:
                raise InvalidQuery(path, f"give '{lower}' or '{upper}', not both")
        kinds = set()
        for name, value in raw.items():
            _scalar(value, f"{path}.{name}")
            if isinstance(value, bool):
                raise InvalidQuery(f"{path}.{name}", "must be a number or a string, not a boolean")
            kinds.add("string" if isinstance(value, str) else "number")
        if len(kinds) > 1:
            raise InvalidQuery(path, "bounds must all be numbers or all strings")
        kind = kinds.pop()
        target.require(kind, f"{path}.{next(iter(raw))}")

        def within(column: _Column) -> str:
            is_kind = column.is_text if kind == "string" else column.is_number
            return "(" + " AND ".join([is_kind, *(f"{column.value} {bounds[name]} {self.bind(value)}"
                                                  for name, value in raw.items())]) + ")"
        return target.test(self, within)

    def equals(self, column: _Column, value: Scalar, target: _Target, path: str) -> str:
        if isinstance(value, bool):
            target.require("boolean", path)
            return column.is_true if value else column.is_false
        if isinstance(value, str):
            target.require("string", path)
            return f"({column.is_text} AND {column.value} = {self.bind(value)})"
        target.require("number", path)
        return f"({column.is_number} AND {column.value} = {self.bind(value)})"

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"


@dataclass(frozen=True)
class _Column:
    """How one value under test is read in SQL: its value, and tests of its JSON type."""

    value: str
    is_text: str
    is_number: str
    is_true: str = "0"
    is_false: str = "0"


class _Target(ABC):
    """What a key refers to: an item column or a metadata path."""

    @abstractmethod
    def test(self, compiler: _Compiler, predicate: Callable[[_Column], str]) -> str:
        """SQL true where the target's value (any element of a list) satisfies `predicate`."""

    @abstractmethod
    def exists(self, compiler: _Compiler) -> str:
        """SQL true where the target has a value."""

    @abstractmethod
    def require(self, kind: str, path: str) -> None:
        """Refuse a value of a kind this target never holds (a string for `id`, say)."""


@dataclass(frozen=True)
class _ItemColumn(_Target):
    name: str
    column: str
    kind: str
    """'number' or 'string'."""
    modality: str | None = None
    """Set for `caption` and `text`, which share a column but belong to one modality each."""

    def test(self, compiler: _Compiler, predicate: Callable[[_Column], str]) -> str:
        is_number = "1" if self.kind == "number" else "0"
        is_text = f"{self.column} IS NOT NULL" if self.kind == "string" else "0"
        sql = f"COALESCE({predicate(_Column(self.column, is_text, is_number))}, 0)"
        return self._of_modality(sql)

    def exists(self, compiler: _Compiler) -> str:
        return self._of_modality(f"({self.column} IS NOT NULL)")

    def require(self, kind: str, path: str) -> None:
        if kind != self.kind:
            raise InvalidQuery(path, f"'{self.name}' holds {'numbers' if self.kind == 'number' else 'strings'}, "
                                     f"not {kind}s")

    def _of_modality(self, sql: str) -> str:
        return f"(modality = '{self.modality}' AND {sql})" if self.modality else sql


@dataclass(frozen=True)
class _MetadataPath(_Target):
    json_path: str

    def test(self, compiler: _Compiler, predicate: Callable[[_Column], str]) -> str:
        # json_each over a scalar yields that one value; over a list, its elements. An object is
        # never equal to anything, so its members are not looked into.
        path = compiler.bind(self.json_path)
        outer = compiler.bind(self.json_path)
        column = _Column("element.value", "element.type = 'text'", f"element.type IN {_NUMBER_TYPES}",
                         "element.type = 'true'", "element.type = 'false'")
        return (f"(COALESCE(json_type(extra, {outer}), 'null') != 'object' AND EXISTS (SELECT 1 FROM "
                f"json_each(extra, {path}) AS element WHERE {predicate(column)}))")

    def require(self, kind: str, path: str) -> None:
        """Metadata may hold any kind of value: nothing is refused."""

    def exists(self, compiler: _Compiler) -> str:
        kind, length = compiler.bind(self.json_path), compiler.bind(self.json_path)
        return (f"COALESCE(json_type(extra, {kind}) NOT IN ('null', 'array') "
                f"OR json_array_length(extra, {length}) > 0, 0)")


_ITEM_COLUMNS = {
    "id": _ItemColumn("id", "id", "number"),
    "modality": _ItemColumn("modality", "modality", "string"),
    "uri": _ItemColumn("uri", "uri", "string"),
    "caption": _ItemColumn("caption", "text", "string", modality="image"),
    "text": _ItemColumn("text", "text", "string", modality="text"),
}


def sort_value_sql(key: str, field: str = "order_by.key") -> tuple[str, tuple[str, ...]]:
    """The SQL expression (and its parameters) of the value `key` names in an items row, for
    sorting: a number, a string, 0 or 1 for a boolean, and NULL where there is none or it is a list
    or an object (as clipsearch.store.items.sort_value reads an Item)."""
    target = _target(key, field)
    if isinstance(target, _ItemColumn):
        return (target.column if target.modality is None else
                f"(CASE WHEN modality = '{target.modality}' THEN {target.column} END)"), ()
    assert isinstance(target, _MetadataPath)
    return ("(CASE WHEN json_type(extra, ?) IN ('integer', 'real', 'text', 'true', 'false') "
            "THEN json_extract(extra, ?) END)"), (target.json_path, target.json_path)


def _target(key: str, path: str) -> _Target:
    if key in _ITEM_COLUMNS:
        return _ITEM_COLUMNS[key]
    name = key.removeprefix(METADATA_PREFIX)
    segments = name.split(".")
    if any(not segment for segment in segments):
        raise InvalidQuery(path, "a metadata key must not have empty parts between dots")
    if any('"' in segment or "\\" in segment for segment in segments):
        raise InvalidQuery(path, 'a metadata key must not contain \'"\' or \'\\\'')
    return _MetadataPath("$" + "".join(f'."{segment}"' for segment in segments))


def _scalar(value: Any, path: str) -> Scalar:
    if isinstance(value, bool | str):
        if isinstance(value, str):
            _check_string(value, path)
        return value
    if isinstance(value, int):
        if not -2**63 <= value < 2**63:
            raise InvalidQuery(path, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidQuery(path, "must be a finite number")
        return value
    shown = "null" if value is None else type(value).__name__
    raise InvalidQuery(path, f"must be a string, a number or a boolean, not {shown}")


def _check_string(value: str, path: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise InvalidQuery(path, f"at most {MAX_STRING_CHARS} characters, got {len(value)}")
    if "\x00" in value:
        raise InvalidQuery(path, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidQuery(path, "must be valid Unicode (no lone surrogates)") from None

"""A relevance cut-off and an order by metadata: which hits pass `min_score`, and how they are sorted.

A search with `min_score` or `order_by` gathers every hit that passes the cut-off (all the hits the
filter allows, without one), so that `matched` counts them and the pages of an order by a metadata
field follow each other exactly. At most `QueryLimits.max_cutoff_results` are gathered: a search
that passes more is refused, naming the field to tighten, rather than answered from part of them.
No model needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clipsearch.errors import InvalidQuery
from clipsearch.store.collection import Hit
from clipsearch.store.filters import METADATA_PREFIX

CUTOFF_FIRST_FETCH = 1024
"""A vector search with a cut-off fetches this many hits at first (at least), and when all of them
pass, searches once more as deep as it may gather: each search is a scan of the whole index, and a
top-1024 costs about what a top-10 does (bench.cutoff), so two scans at most."""

MAX_ORDER_KEY_CHARS = 256

_ITEM_FIELDS = ("id", "modality", "uri", "caption", "text")
"""Keys that name an item's own fields rather than its metadata, as in filters."""


@dataclass(frozen=True)
class OrderBy:
    """Sort the hits that pass the cut-off by `key` (an item field, or a metadata path with dots),
    descending by default. Items without a value there come last either way; ties keep score order."""

    key: str
    descending: bool = True

    @classmethod
    def of(cls, raw: Any, field: str = "order_by") -> OrderBy:
        """An order from the API's {"key": ..., "direction": "asc" | "desc"}, refused naming its path."""
        if not isinstance(raw, dict):
            raise InvalidQuery(field, f"must be an object {{'key', 'direction'}}, not {type(raw).__name__}")
        unknown = sorted(set(raw) - {"key", "direction"})
        if unknown:
            raise InvalidQuery(f"{field}.{unknown[0]}", "unknown field: give 'key' and, optionally, 'direction'")
        key, direction = raw.get("key"), raw.get("direction", "desc")
        if not isinstance(key, str) or not key.strip():
            raise InvalidQuery(f"{field}.key", "must be a non-empty string: an item field or a metadata key")
        if len(key) > MAX_ORDER_KEY_CHARS:
            raise InvalidQuery(f"{field}.key", f"at most {MAX_ORDER_KEY_CHARS} characters, got {len(key)}")
        if any(not part for part in key.removeprefix(METADATA_PREFIX).split(".")):
            raise InvalidQuery(f"{field}.key", "a metadata key must not have empty parts between dots")
        if direction not in ("asc", "desc"):
            raise InvalidQuery(f"{field}.direction", f"must be 'asc' or 'desc', got {direction!r}")
        return cls(key, direction == "desc")


def check_min_score(min_score: float | None) -> None:
    if min_score is not None and not math.isfinite(min_score):
        raise InvalidQuery("min_score", "must be a finite number")


def value_of(hit: Hit, key: str) -> Any:
    """The value `key` names in a hit's item (None where it has none): an item field, or a path
    through its metadata ('metadata.NAME' always means metadata)."""
    item = hit.item
    if key in _ITEM_FIELDS:
        if key in ("caption", "text"):
            is_caption = item.modality.value == "image"
            return item.text if (key == "caption") == is_caption else None
        return item.id if key == "id" else item.modality.value if key == "modality" else item.uri
    value: Any = item.extra
    for part in key.removeprefix(METADATA_PREFIX).split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def ordered(hits: list[Hit], order: OrderBy) -> list[Hit]:
    """`hits` (best score first) sorted by `order`'s key: numbers before strings (a field that mixes
    them is rare, and an order must still be total), items without a number or string there last.
    The sort is stable, so ties stay in score order."""
    numbers: list[tuple[float, Hit]] = []
    strings: list[tuple[str, Hit]] = []
    missing: list[Hit] = []
    for hit in hits:
        value = value_of(hit, order.key)
        if isinstance(value, int | float) and math.isfinite(value):  # booleans too: false < true
            numbers.append((float(value), hit))
        elif isinstance(value, str):
            strings.append((value, hit))
        else:  # lists and objects have no place in an order
            missing.append(hit)
    numbers.sort(key=lambda pair: pair[0], reverse=order.descending)
    strings.sort(key=lambda pair: pair[0], reverse=order.descending)
    return [hit for _, hit in numbers] + [hit for _, hit in strings] + missing


def too_many(passed: int, limit: int, min_score: float | None) -> InvalidQuery:
    """The refusal of a cut-off that passes more hits than can be gathered, naming what to tighten."""
    if min_score is None:
        return InvalidQuery("order_by", f"{passed} results pass the filter and at most {limit} can be ordered: "
                                        "give a min_score, or a narrower filter")
    return InvalidQuery("min_score", f"more than {limit} results score {min_score} or more (the most one search "
                                     "gathers for a cut-off): raise min_score, or narrow the filter")

"""A relevance cut-off and an order by metadata: which hits pass `min_score`, and how they are sorted.

A search with `min_score` or `order_by` gathers every hit that passes the cut-off (all the hits the
filter allows, without one), so that `matched` counts them and the pages of an order by a metadata
field follow each other exactly. At most `QueryLimits.max_cutoff_results` are gathered: a search
that passes more is refused, naming the field to tighten, rather than answered from part of them.
No model needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clipsearch.errors import InvalidQuery
from clipsearch.store.collection import Hit
from clipsearch.store.filters import sort_value_sql
from clipsearch.store.items import sort_value

CUTOFF_FIRST_FETCH = 1024
"""A vector search with a cut-off fetches this many hits at first (at least), and when all of them
pass, searches once more as deep as it may gather: each search is a scan of the whole index, and a
top-1024 costs about what a top-10 does (bench.cutoff), so two scans at most."""

MAX_ORDER_KEY_CHARS = 256


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
        sort_value_sql(key, f"{field}.key")  # a key filters could not name either is refused, naming the path
        if direction not in ("asc", "desc"):
            raise InvalidQuery(f"{field}.direction", f"must be 'asc' or 'desc', got {direction!r}")
        return cls(key, direction == "desc")


def check_min_score(min_score: float | None) -> None:
    if min_score is not None and not math.isfinite(min_score):
        raise InvalidQuery("min_score", "must be a finite number")


def order_positions(values: Sequence[str | float | None], descending: bool) -> list[int]:
    """The positions of `values` (the sort values of hits in score order,
    clipsearch.store.items.sort_value) sorted: numbers before strings (a field that mixes them is
    rare, and an order must still be total), those without a value last in either direction. The
    sort is stable, so ties stay in score order."""
    numbers = [(value, position) for position, value in enumerate(values) if isinstance(value, float)]
    strings = [(value, position) for position, value in enumerate(values) if isinstance(value, str)]
    missing = [position for position, value in enumerate(values) if value is None]
    numbers.sort(key=lambda pair: pair[0], reverse=descending)
    strings.sort(key=lambda pair: pair[0], reverse=descending)
    return [position for _, position in numbers] + [position for _, position in strings] + missing


def ordered(hits: list[Hit], order: OrderBy) -> list[Hit]:
    """`hits` (best score first) sorted by `order` (order_positions)."""
    return [hits[position] for position in
            order_positions([sort_value(hit.item, order.key) for hit in hits], order.descending)]


def too_many(passed: int, limit: int, min_score: float | None) -> InvalidQuery:
    """The refusal of a cut-off that passes more hits than can be gathered, naming what to tighten."""
    if min_score is None:
        return InvalidQuery("order_by", f"{passed} results pass the filter and at most {limit} can be ordered: "
                                        "give a min_score, or a narrower filter")
    return InvalidQuery("min_score", f"more than {limit} results score {min_score} or more (the most one search "
                                     "gathers for a cut-off): raise min_score, or narrow the filter")

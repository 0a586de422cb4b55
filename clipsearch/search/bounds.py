"""What one caller may see and change: for an API key bound to a filter (clipsearch.store.keys),
the items that pass it, as if they were the whole collection.

Its searches are narrowed to the filter, an item outside it is answered as one that does not
exist (404: a tenant learns nothing of another's items, not even their ids), and a write that
would put an item outside it (a new item, or new metadata) is refused (403), so that no write
escapes the filter. No model needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from clipsearch.errors import ItemNotFound, OutsideKeyFilter
from clipsearch.modality import Modality
from clipsearch.search.query import ItemTerm, ResultOptions, Term
from clipsearch.store.collection import Collection
from clipsearch.store.filters import Filter, both, parse_filter
from clipsearch.store.items import Item, passes


@dataclass(frozen=True)
class Bounds:
    """The items passing `filter`; unbounded (everything) when it is None."""

    filter: Filter | None = None

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Bounds:
        return cls(None if raw is None else parse_filter(raw, "filter"))

    def options(self, options: ResultOptions) -> ResultOptions:
        """A search's options narrowed to the bounds."""
        return options if self.filter is None else replace(options, filter=both(self.filter, options.filter))

    def narrowed(self, filter: Filter | None) -> Filter | None:
        return both(self.filter, filter)

    def item(self, collection: Collection, item_id: int, field: str = "id") -> Item:
        """The item `item_id`, if it is within the bounds; else ItemNotFound, as if it did not exist."""
        item = collection.item(item_id, field)
        if self.filter is not None and not passes(item, self.filter):
            raise ItemNotFound(item_id, field)
        return item

    def check_terms(self, collection: Collection, terms: Sequence[Term], field: str = "terms") -> None:
        """Refuse a composed query that names an item outside the bounds (its vector is the item's)."""
        for number, term in enumerate(terms):
            if isinstance(term, ItemTerm):
                self.item(collection, term.item_id, f"{field}[{number}].item_id")

    def visible_ids(self, collection: Collection, ids: Iterable[int]) -> list[int]:
        """The ids among `ids` of items within the bounds (those of no item dropped too: a delete skips them)."""
        return list(ids) if self.filter is None else [item_id for item_id in ids if self._within(collection, item_id)]

    def _within(self, collection: Collection, item_id: int) -> bool:
        """Whether item `item_id` exists and is within the bounds (a deleted item is nobody's)."""
        try:
            self.item(collection, item_id)
        except ItemNotFound:
            return False
        return True

    def check_new(self, collection: Collection, modality: Modality, text: str | None, metadata: dict[str, Any],
                  field: str, key: str | None = None) -> None:
        """Refuse an item to be written (added, or changed to this) that would fall outside the bounds,
        or an add whose `key` would replace an item outside them. `field` is where the item was given
        (empty: the request's body itself)."""
        if self.filter is None:
            return
        prefix = f"{field}." if field else ""
        if key is not None and collection.live is not None:
            replaced = collection.live.id_of(modality, key)
            if replaced is not None and not self._within(collection, replaced):
                raise OutsideKeyFilter("this key would replace an item outside the API key's filter", f"{prefix}key")
        if not passes(Item(0, modality, key or "", text, metadata, ""), self.filter):
            raise OutsideKeyFilter(f"the item would fall outside the API key's filter {self.filter.canonical}",
                                   f"{prefix}metadata")

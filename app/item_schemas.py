"""The bodies of the write endpoints (/items): texts added, items edited and deleted, and what they answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextItemModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    key: str | None = Field(None, description="Unique among texts; an existing key replaces that item and keeps its "
                                              "id. Default: a new key.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Any JSON object; filters reach its fields.")


class AddTextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"items": [
        {"text": "a note about Paris", "key": "notes/paris", "metadata": {"album": "Paris"}}]}]})

    items: list[TextItemModel]


class WriteResponse(BaseModel):
    ids: list[int] = Field(description="The items' ids, in the order given (a replaced item keeps its id).")
    took_ms: float


class EditItemRequest(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"caption": "the Eiffel tower at night", "metadata": {"album": "Paris", "year": 2024}}]})

    caption: str | None = Field(None, description="An image's caption (null clears it).")
    text: str | None = Field(None, description="A text item's text; it is embedded again.")
    metadata: dict[str, Any] | None = Field(None, description="Replaces the item's metadata whole (null clears it).")


class DeleteItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"ids": [3, 7]}, {"filter": {"key": "album", "match": {"value": "old"}}}]})

    ids: list[int] | None = Field(None, description="Items to delete (unknown ids are skipped).")
    filter: dict[str, Any] | None = Field(None, description="Delete every item, of both modalities, passing this "
                                                            "filter (as in /search).")

    @model_validator(mode="after")
    def _exactly_one(self) -> DeleteItemsRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give exactly one of ids and filter")
        return self


class DeleteResponse(BaseModel):
    deleted: list[int] = Field(description="The ids that existed and are gone.")
    took_ms: float

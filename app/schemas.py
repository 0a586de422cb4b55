"""Request and response bodies of the API, with the examples shown at /docs."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipsearch.collection import Hit
from clipsearch.index import IndexSpec
from clipsearch.item_store import Item
from clipsearch.modality import Modality
from clipsearch.query import ImageTerm, ItemTerm, Term, TextTerm

MAX_ITEM_ID = 2**63 - 1  # ids are SQLite / FAISS int64
MAX_ABS_WEIGHT = 1000.0


class TextSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"text": "a dog running on the beach", "target": "image", "k": 10}]})

    text: str = Field(description="What to look for; longer than the model's context is truncated.")
    # Strict models refuse true for 1 and "3" for 3; the enum still has to be read from its JSON string.
    target: Modality = Field(Modality.IMAGE, strict=False, description="Which items to return.")
    k: int = Field(10, ge=1, description="How many results (1 to the server's max_k).")


class QueryTermModel(BaseModel):
    """One term of a composed query: exactly one of text, image_b64 and item_id, with a weight."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = None
    image_b64: str | None = Field(None, description="An image file, base64-encoded.")
    item_id: int | None = Field(None, ge=0, le=MAX_ITEM_ID, description="An item of the bundle, by id.")
    weight: float = Field(1.0, ge=-MAX_ABS_WEIGHT, le=MAX_ABS_WEIGHT,
                          description="Multiplies this term's unit embedding; negative steers away.")

    @field_validator("image_b64")
    @classmethod
    def _must_be_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as error:
                raise ValueError(f"not valid base64 ({error})") from None
        return value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> QueryTermModel:
        given = [name for name in ("text", "image_b64", "item_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of text, image_b64 and item_id (got {', '.join(given) or 'none'})")
        return self

    def to_term(self) -> Term:
        if self.text is not None:
            return TextTerm(self.text, self.weight)
        if self.image_b64 is not None:
            return ImageTerm(base64.b64decode(self.image_b64), self.weight)
        assert self.item_id is not None
        return ItemTerm(self.item_id, self.weight)


class ComposedSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "queries": [{"item_id": 42, "weight": 1.0}, {"text": "at night", "weight": 0.8},
                    {"text": "people", "weight": -0.5}],
        "target": "image", "k": 10}]})

    queries: list[QueryTermModel] = Field(description="The terms; their weighted embeddings are summed.")
    target: Modality = Field(Modality.IMAGE, strict=False, description="Which items to return.")
    k: int = Field(10, ge=1, description="How many results (1 to the server's max_k).")


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"text": "a red bicycle"}]})

    text: str


class HitModel(BaseModel):
    id: int
    score: float = Field(description="Cosine similarity to the query.")
    modality: Modality
    uri: str = Field(description="Where the item came from: a file path or a text file and line.")
    caption: str | None = Field(None, description="An image's caption, if it has one.")
    text: str | None = Field(None, description="A text item's text.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, hit: Hit) -> HitModel:
        return cls(score=hit.score, **ItemModel.of(hit.item).model_dump())


class ItemModel(BaseModel):
    id: int
    modality: Modality
    uri: str
    caption: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, item: Item) -> ItemModel:
        is_image = item.modality is Modality.IMAGE
        return cls(id=item.id, modality=item.modality, uri=item.uri, caption=item.text if is_image else None,
                   text=None if is_image else item.text, metadata=item.extra)


class SearchResponse(BaseModel):
    results: list[HitModel]
    took_ms: float
    truncated: list[str] = Field(default_factory=list,
                                 description="Query fields whose text was longer than the model's context "
                                             "and was truncated.")


class EmbeddingResponse(BaseModel):
    embedding: list[float] = Field(description="Unit-length (L2) vector.")
    dim: int
    model: str
    truncated: bool = False


class InfoResponse(BaseModel):
    model: str
    pretrained: str | None
    checkpoint_sha256: str | None
    embedding_dim: int
    counts: dict[Modality, int]
    indices: dict[Modality, IndexSpec]
    device: str
    cuda_graphs: bool = Field(description="Whether the model replays captured CUDA graphs (GPU only).")
    backend: str = Field(description="What runs the model: 'torch', 'onnx' or 'onnx-int8'.")
    threads: int = Field(description="Intra-op threads of each forward pass, in this worker.")
    text_trim: bool = Field(description="Whether the text tower runs on each batch's real length (exact for this "
                                        "model).")
    mean_batch: dict[str, float] = Field(description="Queries per forward pass or search so far, by stage: how much "
                                                     "micro-batching is happening.")
    bundle_created_at: str
    evaluations: list[dict[str, Any]] = Field(description="Retrieval quality of the model, one record per "
                                                          "`indexer eval --bundle` run, oldest first.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="'<field>: <reason>', or the reason alone.")
    field: str | None
    reason: str

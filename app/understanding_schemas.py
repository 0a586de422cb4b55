"""The bodies of the endpoints that look into one image or item: zero-shot labels (/classify),
explanations (/explain), captions (/caption) and answers to questions (/ask)."""

from __future__ import annotations

import base64

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas import MAX_ITEM_ID, QueryTermModel, decodable_base64


class ImageSourceModel(BaseModel):
    """An image given inline (`image_b64`) or as an image item of the bundle (`item_id`): exactly one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_b64: str | None = Field(None, description="An image file, base64-encoded.")
    item_id: int | None = Field(None, ge=0, le=MAX_ITEM_ID, description="An image item of the bundle, by id.")

    @field_validator("image_b64")
    @classmethod
    def _must_be_base64(cls, value: str | None) -> str | None:
        return decodable_base64(value)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageSourceModel:
        if (self.image_b64 is None) == (self.item_id is None):
            raise ValueError("give exactly one of image_b64 and item_id")
        return self

    @property
    def image_bytes(self) -> bytes | None:
        return None if self.image_b64 is None else base64.b64decode(self.image_b64)


class ClassifyRequest(ImageSourceModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "item_id": 42, "labels": ["beach", "mountains", "city"], "multi_label": False}]})

    labels: list[str] = Field(description="The categories to score, each different (up to the server's max_labels).")
    templates: list[str] | None = Field(None, description="Prompt templates, each with '{}' where the label goes; "
                                                          "default: a small ensemble such as 'a photo of a {}.'.")
    multi_label: bool = Field(False, description="Score each label on its own (probabilities need not sum to 1).")


class LabelScoreModel(BaseModel):
    label: str
    probability: float = Field(description="Softmax over the labels, or each label's own probability with "
                                           "multi_label.")
    cosine: float = Field(description="Cosine similarity between the image and the label's embedding.")


class ClassifyResponse(BaseModel):
    labels: list[LabelScoreModel] = Field(description="Every label, most probable first.")
    multi_label: bool
    calibration: str = Field(description="How cosines became probabilities: the model's own logit_scale (and "
                                         "logit_bias for sigmoid-trained models).")
    took_ms: float


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "queries": [{"text": "a dog on a beach"}], "item_ids": [42]}]})

    queries: list[QueryTermModel] = Field(description="The query, as in /search: one term or a weighted mix.")
    item_ids: list[int] = Field(description="Image items to explain (up to the server's max_explained).")
    overlay: bool = Field(True, description="Include a PNG of each image with the map drawn over it.")

    @field_validator("item_ids")
    @classmethod
    def _ids_in_range(cls, value: list[int]) -> list[int]:
        for number, item_id in enumerate(value):
            if not 0 <= item_id <= MAX_ITEM_ID:
                raise ValueError(f"item_ids[{number}] must be an item id (0 to {MAX_ITEM_ID}), got {item_id}")
        return value


class HeatmapModel(BaseModel):
    item_id: int
    score: float = Field(description="Cosine similarity between the query and the item's stored vector.")
    grid: list[list[float]] = Field(description="The query's cosine with each image patch, rows top to bottom: "
                                                "the model's patch grid over the image as it saw it (resized and "
                                                "centre-cropped).")
    overlay_png_b64: str | None = Field(None, description="That view with the grid as a heat map over it (red: "
                                                          "best within this image), base64 PNG.")


class ExplainResponse(BaseModel):
    method: str = Field(description="How patch features were made: 'value-path' (MaskCLIP-style) or 'raw-tokens'.")
    results: list[HeatmapModel]
    truncated: list[str] = Field(default_factory=list)
    took_ms: float


class CaptionRequest(ImageSourceModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"item_id": 42}]})


class CaptionResponse(BaseModel):
    caption: str
    model: str
    took_ms: float


class AskRequest(ImageSourceModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "item_id": 42, "question": "what colour is the car?"}]})

    question: str = Field(description="A question about the image, in English (up to the server's "
                                      "vqa_max_question_chars).")


class AskResponse(BaseModel):
    answer: str = Field(description="The model's answer: short, in English ('yes', 'two', 'red').")
    score: float = Field(description="The model's probability of this answer, 0 to 1.")
    model: str
    took_ms: float

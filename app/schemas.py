"""Request and response bodies of the API, with the examples shown at /docs (the write endpoints'
in app/item_schemas.py; labels, explanations, captions and answers in app/understanding_schemas.py)."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipsearch.index.fusion import Fusion
from clipsearch.index.spec import IndexSpec
from clipsearch.modality import Modality
from clipsearch.model.vqa import Answer
from clipsearch.search.cutoff import OrderBy
from clipsearch.search.dedup import DEFAULT_THRESHOLD as DEFAULT_DEDUP_THRESHOLD
from clipsearch.search.hybrid import FusionMethod, Ranking, SearchMode
from clipsearch.search.query import GROUP_BY_ITEM, ImageTerm, ItemTerm, ResultOptions, Term, TextTerm
from clipsearch.store.collection import Hit
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import Item
from clipsearch.store.segments import SegmentSpan

MAX_ITEM_ID = 2**63 - 1  # ids are SQLite / FAISS int64
MAX_ABS_WEIGHT = 1000.0


def decodable_base64(value: str | None) -> str | None:
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"not valid base64 ({error})") from None
    return value


class OrderByModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(description="An item field (id, uri, caption, text) or a metadata key, dots for nested "
                                 "objects, as in filters.")
    direction: Literal["asc", "desc"] = Field("desc", description="'desc': largest or latest first.")


class ResultOptionsModel(BaseModel):
    """Which results come back: filtered, paged, near-duplicates collapsed (every search takes these)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    filter: dict[str, Any] | None = Field(None, description=(
        "Only items passing this filter, in Qdrant's style: a condition {'key', 'match' | 'range' | 'exists'} "
        "or clauses {'must', 'should', 'must_not'} of them. Keys: id, modality, uri, caption, text, or any "
        "metadata key (dots go into nested objects; 'metadata.NAME' always means metadata), ocr_text among them "
        "(the text read from images: {'key': 'ocr_text', 'match': {'text': 'invoice'}} holds every word given)."),
        examples=[{"must": [{"key": "album", "match": {"value": "Paris"}}, {"key": "year", "range": {"gte": 2020}}]}])
    offset: int = Field(0, ge=0, description="Skip this many results first (up to the server's max_offset): "
                                             "the next page starts at offset + k.")
    dedup: bool | float | None = Field(None, description=(
        "Collapse near-duplicates into the best-ranked of each group: true for a cosine of "
        f"{DEFAULT_DEDUP_THRESHOLD} or more, or a threshold in (0, 1]. Each result lists the ids it absorbed "
        "in `duplicates`."))

    fusion: dict[str, Any] | None = Field(None, description=(
        "Weigh an image's picture, caption and read text {'image': 0.6, 'caption': 0.2, 'ocr': 0.2} (a video's best "
        "segment and caption), normalised to sum to 1, a part left out weighing 0; default: the bundle's (--fuse). "
        "Only for fused bundles, the parts they store, and videos over an exact index."),
        examples=[{"image": 0.6, "caption": 0.4}])

    min_score: float | None = Field(None, allow_inf_nan=False, description=(
        "Only results scoring this or more, on the scale of `score`: the cosine in vector searches (-1 to 1; "
        "fused image scores are cosines too), BM25 in keyword searches (0 and up), the fused score in hybrid "
        "ones (RRF: at most 2/(rrf_k + 1); 'weighted': 0 to 1). `matched` then counts the results that pass; "
        "a search that passes more than the server's max_cutoff_results is refused."), examples=[0.25])
    order_by: OrderByModel | None = Field(None, description=(
        "Sort the results that pass `min_score` (and the filter) by an item field or metadata key, rather than "
        "by score: results without a value there come last, ties stay in score order. Without `min_score`, "
        "every result the filter passes is sorted (at most max_cutoff_results)."),
        examples=[{"key": "taken_at", "direction": "desc"}])

    group_by: Literal["item", "segments"] = Field("item", description=(
        "For video and sound results: each item once, scored by its best segment (a sound's: window), with "
        "that `segment` and its best `moments` ('item'); or every segment found as a result of its own "
        "('segments': vector mode only, without dedup, order_by or min_score)."))

    ask: str | None = Field(None, description=(
        "A question (in English) the question-answering model answers about each image result: each gets its "
        "`answer` and `answer_score` (up to the server's vqa_max_hits results; text results get none)."),
        examples=["is there a dog?"])
    ask_filter: str | None = Field(None, description=(
        "With `ask`: keep only the results whose answer is this, such as 'yes' (case aside); the response's "
        "`asked.dropped` counts the others. Applies to this page: `matched` and `more` are the search's."))

    def options(self) -> ResultOptions:
        order_by = None if self.order_by is None else self.order_by.model_dump()
        return result_options(self.filter, self.offset, self.dedup, self.fusion, self.min_score, order_by,
                              self.group_by)


def result_options(filter: Any, offset: int, dedup: bool | float | None, fusion: Any = None,
                   min_score: float | None = None, order_by: Any = None, group_by: str = GROUP_BY_ITEM
                   ) -> ResultOptions:
    """ResultOptions from the API's fields; a bad filter, fusion or order raises InvalidQuery naming its path."""
    threshold = DEFAULT_DEDUP_THRESHOLD if dedup is True else None if dedup is False else dedup
    return ResultOptions(filter=None if filter is None else parse_filter(filter, "filter"), offset=offset,
                         dedup=threshold, fusion=None if fusion is None else Fusion.of(fusion, "fusion"),
                         min_score=min_score, order_by=None if order_by is None else OrderBy.of(order_by),
                         group_by=group_by)


class HybridModel(BaseModel):
    """How a hybrid search fuses its vector and keyword rankings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    method: FusionMethod = Field(FusionMethod.RRF, strict=False, description=(
        "'rrf': reciprocal rank fusion, 2w/(K + vector rank) + 2(1-w)/(K + keyword rank), K the server's rrf_k; "
        "'weighted': w × vector + (1-w) × keyword scores, each scaled to [0, 1] over its candidates."))
    vector_weight: float = Field(0.5, ge=0, le=1, description="w: the vector ranking's share (0.5: even).")


class TextSearchRequest(ResultOptionsModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"text": "a dog running on the beach", "target": "image", "k": 10},
                     {"text": "a dog", "k": 10, "filter": {"key": "album", "match": {"value": "Paris"}},
                      "dedup": True, "offset": 10},
                     {"text": "eiffel tower at night", "mode": "hybrid", "hybrid": {"method": "rrf"}}]})

    text: str = Field(description="What to look for; longer than the model's context is truncated.")
    # Strict models refuse true for 1 and "3" for 3; the enum still has to be read from its JSON string.
    target: Modality = Field(Modality.IMAGE, strict=False, description="Which items to return.")
    k: int = Field(10, ge=1, description="How many results (1 to the server's max_k).")
    mode: SearchMode = Field(SearchMode.VECTOR, strict=False, description=(
        "'vector': by embedding; 'keyword': by the words of captions, texts and the bundle's keyword fields "
        "(SQLite FTS5, BM25); 'hybrid': both rankings fused (see `hybrid`). Each result's `ranks` says which "
        "lists it came from."))
    hybrid: HybridModel = Field(default_factory=HybridModel, description="How 'hybrid' fuses the two rankings.")

    def ranking(self) -> Ranking:
        return Ranking(self.mode, self.hybrid.method, self.hybrid.vector_weight)


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
        return decodable_base64(value)

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


class ComposedSearchRequest(ResultOptionsModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "queries": [{"item_id": 42, "weight": 1.0}, {"text": "at night", "weight": 0.8},
                    {"text": "people", "weight": -0.5}],
        "target": "image", "k": 10, "explain": True}]})

    queries: list[QueryTermModel] = Field(description="The terms; their weighted embeddings are summed.")
    target: Modality = Field(Modality.IMAGE, strict=False, description="Which items to return.")
    k: int = Field(10, ge=1, description="How many results (1 to the server's max_k).")
    explain: bool = Field(False, description="Give every result each term's share of its score (`shares`).")


class AskedModel(BaseModel):
    question: str
    model: str
    answered: int = Field(description="Image results answered on this page.")
    dropped: int = Field(description="Results `ask_filter` dropped from this page.")


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"text": "a red bicycle"}]})

    text: str


class HitModel(BaseModel):
    id: int
    score: float = Field(description="Cosine similarity to the query; with mode 'keyword', BM25 (higher is "
                                     "better); with 'hybrid', the fused score.")
    modality: Modality
    uri: str = Field(description="Where the item came from: a file path or a text file and line.")
    caption: str | None = Field(None, description="An image's or a video's caption, if it has one.")
    text: str | None = Field(None, description="A text item's text.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    shares: list[float] | None = Field(None, description="With `explain`: each query term's share of the score, "
                                                         "in the order of `queries`; they add up to the score.")
    duplicates: list[int] | None = Field(None, description="With `dedup`: ids of the lower-ranked near-duplicates "
                                                           "collapsed into this result.")
    ranks: dict[str, int] | None = Field(None, description="With mode 'keyword' or 'hybrid': this result's rank "
                                                           "(from 1) in each list it came from, 'vector' and "
                                                           "'keyword'.")
    fused: dict[str, float] | None = Field(None, description="For image and video results of a fused bundle: "
                                                             "what the image (a video's best segment) and each of "
                                                             "its texts ('caption', 'ocr') add to the cosine score "
                                                             "(a text it lacks: its picture in its place); in "
                                                             "vector mode they add up to `score`.")
    ocr_matches: list[OcrMatchModel] | None = Field(None, description=(
        "For a text query's image results whose text was read (--ocr): the lines that hold words of the "
        "query, each with its box in the image and the words it holds. The whole text is in metadata.ocr_text, "
        "every line in metadata.ocr.lines."))
    answer: str | None = Field(None, description="With `ask`: the model's answer about this image result.")
    answer_score: float | None = Field(None, description="With `ask`: the model's probability of that answer.")
    segment: SegmentModel | None = Field(None, description=(
        "For a video or sound result: the moment that scored it (with group_by 'item', its best segment or "
        "window)."))
    moments: list[MomentModel] | None = Field(None, description=(
        "For a video or sound result of a vector or hybrid search (group_by 'item'): its best segments or "
        "windows, each with its score, in time order."))

    @classmethod
    def of(cls, hit: Hit, shares: list[float] | None = None, deduplicated: bool = False,
           answer: Answer | None = None, base: str = "") -> HitModel:
        """The hit as the API gives it; `base` is the path its collection's routes are under ('' for the default)."""
        matches = [OcrMatchModel.model_validate(match) for match in hit.ocr_matches] or None
        framed = hit.item.modality is Modality.VIDEO
        segment = None if hit.segment is None else SegmentModel.of(hit.item.id, hit.segment, base, framed=framed)
        moments = [MomentModel.of(hit.item.id, span, base, framed=framed, score=score)
                   for span, score in hit.moments] or None
        return cls(score=hit.score, shares=shares, duplicates=list(hit.duplicates) if deduplicated else None,
                   ranks=hit.ranks, fused=hit.fused, ocr_matches=matches, segment=segment, moments=moments,
                   answer=None if answer is None else answer.text,
                   answer_score=None if answer is None else answer.score, **ItemModel.of(hit.item).model_dump())


class SegmentModel(BaseModel):
    position: int = Field(description="Its place among the video's segments (or the sound's windows), from 0.")
    start_s: float = Field(description="Where it starts in the video or the sound, in seconds.")
    end_s: float = Field(description="Where it ends (a video's segment: where the next one starts; a sound's "
                                     "windows overlap).")
    thumbnail: str | None = Field(None, description="A video segment's first frame, a JPEG (GET, with the same "
                                                    "key); none for a sound's window.")

    @classmethod
    def of(cls, item_id: int, span: SegmentSpan, base: str, *, framed: bool = True) -> SegmentModel:
        """`framed`: a video's segment, which has a frame to show."""
        return cls(position=span.position, start_s=span.start_s, end_s=span.end_s,
                   thumbnail=f"{base}/items/{item_id}/frame?at={span.start_s:g}" if framed else None)


class MomentModel(SegmentModel):
    score: float = Field(description="The segment's cosine similarity to the query.")

    @classmethod
    def of(cls, item_id: int, span: SegmentSpan, base: str, *, framed: bool = True, score: float = 0.0) -> MomentModel:
        return cls(**SegmentModel.of(item_id, span, base, framed=framed).model_dump(), score=score)


class OcrMatchModel(BaseModel):
    text: str = Field(description="The line as read.")
    box: list[list[int]] = Field(description="Its four corners [x, y] in the image's pixels, clockwise from the "
                                             "top left.")
    score: float = Field(description="The recogniser's confidence, 0 to 1.")
    words: list[str] = Field(description="The query's words it holds (lowercase), in the query's order.")
    spaced: str | None = Field(None, description="The line with spaces put back between words the recogniser "
                                                 "ran together, where it did.")


class ItemModel(BaseModel):
    id: int
    modality: Modality
    uri: str
    caption: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, item: Item) -> ItemModel:
        captioned = item.modality is not Modality.TEXT  # an image's or a video's text is its caption
        return cls(id=item.id, modality=item.modality, uri=item.uri, caption=item.text if captioned else None,
                   text=None if captioned else item.text, metadata=item.extra)


class SearchResponse(BaseModel):
    results: list[HitModel]
    matched: int = Field(description="How many items of the target passed the filter (all of them without one), "
                                     "and min_score when given. Fewer results than k means fewer remain past the "
                                     "offset.")
    more: bool = Field(description="Whether results go on past this page (ask again with offset + k).")
    took_ms: float
    truncated: list[str] = Field(default_factory=list,
                                 description="Query fields whose text was longer than the model's context "
                                             "and was truncated.")
    asked: AskedModel | None = Field(None, description="With `ask`: the question, the model, and how many "
                                                       "results were answered and dropped.")


class EmbeddingResponse(BaseModel):
    embedding: list[float] = Field(description="Unit-length (L2) vector.")
    dim: int
    model: str
    truncated: bool = False


class DiskInfo(BaseModel):
    path: str = Field(description="The bundle's directory.")
    mount: str = Field(description="Where the filesystem that holds it is mounted.")
    free_bytes: int
    total_bytes: int
    read_only: bool


class WritesInfo(BaseModel):
    enabled: bool = Field(description="An admin key is set, so writes are allowed at all.")
    accepted: bool = Field(description="Writes go through now: false while the bundle cannot take them, or since "
                                       "the last write was refused by the filesystem (until one goes through).")
    refused: str | None = Field(None, description="Why not: 'disk_full' (507), 'unwritable' or 'locked' (503), "
                                                  "'bundle_replaced' or 'not_loaded'.")
    reason: str | None = Field(None, description="The refusal's message, as the refused write was answered.")
    since: str | None = Field(None, description="When writes were first refused for this reason (UTC).")
    refusals: int = Field(0, description="Writes refused for this reason since then.")
    disk: DiskInfo | None = Field(None, description="The room left where the bundle is, now.")


class MemoryInfo(BaseModel):
    collection_bytes: int = Field(description="This collection's indices: its base's FAISS files and its live "
                                              "vectors (an on-disk index's lists are mapped, not counted).")
    collections_bytes: dict[str, int] = Field(description="Every collection this worker serves, as counted at "
                                                          "load and at each reload.")
    models_bytes: dict[str, int] = Field(description="The weights of each model loaded, shared by the collections "
                                                     "of that model.")
    budget_bytes: int | None = Field(description="CLIPSEARCH_MEMORY_BUDGET_MB; null: no limit.")


class InfoResponse(BaseModel):
    model: str
    pretrained: str | None
    checkpoint_sha256: str | None
    embedding_dim: int
    counts: dict[Modality, int] = Field(description="Items of each modality, live changes included.")
    indices: dict[Modality, IndexSpec]
    device: str
    cuda_graphs: bool = Field(description="Whether the model replays captured CUDA graphs (GPU only).")
    backend: str = Field(description="What runs the model: 'torch', 'onnx', 'onnx-int8', 'openvino' or "
                                     "'openvino-int8' (a failed int8 self-check runs the fp32 export).")
    backend_startup_ms: dict[str, float] | None = Field(None, description="With backend 'auto' and both ONNX "
                                                        "Runtime and OpenVINO installed: one query plus one image "
                                                        "on each at start-up, in ms; the faster runs.")
    backend_cosine: float | None = Field(None, description="The exported towers' lowest cosine to PyTorch over "
                                         "their self-check's probes (for int8, a sample of its calibration images "
                                         "and texts too); null on PyTorch.")
    threads: int = Field(description="Intra-op threads of each forward pass, in this worker.")
    torch_weights: bool = Field(True, description="Whether this worker holds the PyTorch copy of the weights: "
                                "false once ONNX Runtime runs both towers (unless CLIPSEARCH_KEEP_TORCH_WEIGHTS), "
                                "until explain's heatmaps build it again.")
    text_trim: bool = Field(description="Whether the text tower runs on each batch's real length (exact for this "
                                        "model).")
    mean_batch: dict[str, float] = Field(description="Queries per forward pass or search so far, by stage: how much "
                                                     "micro-batching is happening.")
    bundle_created_at: str
    evaluations: list[dict[str, Any]] = Field(description="Retrieval quality of the model, one record per "
                                                          "`indexer eval --bundle` run, oldest first.")
    live_changes: int = Field(0, description="Live items and hidden base items not yet folded into the base "
                                             "by a compaction.")
    compactions: list[dict[str, Any]] = Field(default_factory=list, description="The compactions that folded live "
                                              "changes into the base served, oldest first.")
    fusion: dict[str, float] | None = Field(None, description="The default weights of image, caption and read "
                                                              "text (ocr) in image and video searches (--fuse); "
                                                              "the parts named are those it stores.")
    keyword_fields: list[str] = Field(default_factory=list, description="Metadata fields searched by keyword besides "
                                                                        "captions and texts.")
    ocr: dict[str, Any] | None = Field(None, description="For a bundle built with --ocr: the engine that read its "
                                                         "images' text (and reads images written to it) and its "
                                                         "settings; null otherwise.")
    audio: dict[str, Any] | None = Field(None, description="For a collection with sounds: the audio model that "
                                         "embeds them and the queries that target them, its `embedding_dim`, and "
                                         "how recordings are cut (`window_s`, `hop_s`, `sampling_rate`); null "
                                         "otherwise.")
    writes: WritesInfo | None = Field(None, description="Whether writes go through, why not, and the disk's room.")
    worker: int = Field(description="The process id of the server worker that answered (one of "
                                    "CLIPSEARCH_SERVER_WORKERS): which one a connection reached.")
    collection: str = Field("default", description="The collection described.")
    memory: MemoryInfo | None = Field(None, description="What this worker holds in memory, against its budget.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="'<field>: <reason>', or the reason alone.")
    field: str | None
    reason: str

"""A small typed Python client for the search service (httpx).

    with ClipSearchClient("http://localhost:8000") as client:
        for hit in client.search_text("a dog on the beach").results:
            print(hit.score, hit.uri)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from clipsearch.modality import Modality


class ClipSearchAPIError(Exception):
    """The server refused a request; `field` and `reason` come from its error body."""

    def __init__(self, status_code: int, detail: str, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail, self.field, self.reason = status_code, detail, field, reason


@dataclass(frozen=True)
class Moment:
    """A stretch of a video or sound hit: its position among the video's segments (the sound's
    windows), its span in seconds, the path of a video segment's first frame (GET it with
    `thumbnail`; none for a sound), and its score where the hit lists its moments."""

    position: int
    start_s: float
    end_s: float
    thumbnail: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class SearchHit:
    id: int
    score: float
    modality: Modality
    uri: str
    caption: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    shares: list[float] | None = None
    """With explain=True: each query term's share of the score, in the order of the terms."""
    duplicates: list[int] | None = None
    """With dedup: ids of the lower-ranked near-duplicates collapsed into this hit."""
    ranks: dict[str, int] | None = None
    """With mode 'keyword' or 'hybrid': the hit's rank (from 1) in each list it came from ('vector', 'keyword')."""
    fused: dict[str, float] | None = None
    """In a fused bundle's image results: what the image and each of its texts (caption, ocr) add to the score."""
    ocr_matches: list[dict[str, Any]] | None = None
    """In a text query's image results whose text was read (--ocr): the lines holding the query's
    words, each with its `text`, `box` (four [x, y] corners in the image), `score` and `words`."""
    answer: str | None = None
    """With ask: the question-answering model's answer about this image hit."""
    answer_score: float | None = None
    """Its probability under the model, 0 to 1."""
    segment: Moment | None = None
    """For a video hit: the moment that scored it (with group_by 'item', its best segment)."""
    moments: list[Moment] | None = None
    """For a video hit of a vector or hybrid search: its best segments with their scores, in time order."""


@dataclass(frozen=True)
class LabelProbability:
    label: str
    probability: float
    cosine: float


@dataclass(frozen=True)
class Heatmap:
    item_id: int
    score: float
    grid: np.ndarray
    """The query's cosine with each image patch, float32 (rows, columns)."""
    overlay_png: bytes | None


@dataclass(frozen=True)
class AnswerResult:
    answer: str
    score: float
    """The model's probability of the answer, 0 to 1."""
    model: str
    took_ms: float


@dataclass(frozen=True)
class Asked:
    """What a search's `ask` did: the question, the model, and the results answered and dropped."""

    question: str
    model: str
    answered: int
    dropped: int


@dataclass(frozen=True)
class SearchResult:
    results: list[SearchHit]
    took_ms: float
    truncated: list[str]
    matched: int = 0
    """Items of the target that passed the filter (all of them without one)."""
    more: bool = False
    """Whether results go on past this page: ask again with offset + k."""
    asked: Asked | None = None
    """With ask: the question asked about each image hit (each hit's `answer`), and what ask_filter dropped."""

    @property
    def ids(self) -> list[int]:
        return [hit.id for hit in self.results]


@dataclass(frozen=True)
class Query:
    """One term of a composed query: exactly one of text, image (path or bytes) and item_id."""

    text: str | None = None
    image: Path | bytes | None = None
    item_id: int | None = None
    weight: float = 1.0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"weight": self.weight}
        if self.text is not None:
            body["text"] = self.text
        if self.image is not None:
            body["image_b64"] = base64.b64encode(_image_bytes(self.image)).decode("ascii")
        if self.item_id is not None:
            body["item_id"] = self.item_id
        return body


ImageInput = Path | str | bytes
OrderByInput = str | dict[str, str]
"""A metadata key to sort by, latest or largest first, or the server's {"key", "direction"}."""


def _image_bytes(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


@dataclass(frozen=True)
class NewImage:
    """An image to add: a file's path or its bytes, with an optional key, caption and metadata."""

    image: Path | str | bytes
    key: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewText:
    text: str
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class ClipSearchClient:
    def __init__(self, base_url: str = "http://localhost:8000", timeout: float = 30.0,
                 http: httpx.Client | None = None, api_key: str | None = None, admin_key: str | None = None,
                 collection: str | None = None) -> None:
        """`collection`: send every request to /collections/{collection}/… (None: the server's default)."""
        headers = {"X-API-Key": api_key} if api_key else {}
        if admin_key:
            headers["X-Admin-Key"] = admin_key
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        self._prefix = "" if collection is None else f"/collections/{quote(collection, safe='')}"

    def __enter__(self) -> ClipSearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def search_text(self, text: str, target: Modality | str = Modality.IMAGE, k: int = 10, *,
                    filter: dict[str, Any] | None = None, offset: int = 0,
                    dedup: bool | float | None = None, mode: str = "vector", hybrid_method: str = "rrf",
                    vector_weight: float = 0.5, fusion: dict[str, float] | None = None, ask: str | None = None,
                    ask_filter: str | None = None, min_score: float | None = None,
                    order_by: OrderByInput | None = None, group_by: str = "item") -> SearchResult:
        """Search with a text. `filter` is the server's filter JSON (e.g. {"key": "album", "match":
        {"value": "Paris"}}), `offset` skips that many results, `dedup` collapses near-duplicates.
        `mode` is 'vector', 'keyword' (BM25 over captions, texts and keyword fields) or 'hybrid'
        (both rankings fused by `hybrid_method`, 'rrf' or 'weighted', with `vector_weight` the
        vector ranking's share); each hit's `ranks` then says where it came from. `fusion` weighs
        image (and video) results' picture, caption and read text ({"image": 0.6, "caption": 0.2, "ocr": 0.2}) in
        a fused bundle; each hit's `fused` then says what each added. `ask` is a question the server's
        question-answering model answers about each image hit (its `answer`); `ask_filter` keeps only the
        hits with that answer ("yes"). `min_score` keeps only hits scoring that or more (then `matched`
        counts them); `order_by` sorts those by a metadata key rather than by score: "taken_at" (latest
        first) or {"key": "taken_at", "direction": "asc"}. For `target` 'video', each video comes once with
        its best `segment` and `moments`; `group_by` 'segments' gives each segment found as a hit."""
        body = {"text": text, "target": str(target), "k": k,
                **_options(filter, offset, dedup, fusion, ask, ask_filter, min_score, order_by, group_by),
                "mode": mode, "hybrid": {"method": hybrid_method, "vector_weight": vector_weight}}
        return _search_result(self._post("/search/text", json=body))

    def search_image(self, image: ImageInput, target: Modality | str = Modality.IMAGE, k: int = 10, *,
                     filter: dict[str, Any] | None = None, offset: int = 0,
                     dedup: bool | float | None = None, fusion: dict[str, float] | None = None,
                     ask: str | None = None, ask_filter: str | None = None, min_score: float | None = None,
                     order_by: OrderByInput | None = None, group_by: str = "item") -> SearchResult:
        """Search with an image file's path or its bytes; options as in search_text."""
        files = {"file": ("query", _image_bytes(image), "application/octet-stream")}
        options = _options(filter, offset, dedup, fusion, ask, ask_filter, min_score, order_by, group_by)
        # Form fields are text: objects go as JSON, booleans as 'true' / 'false'.
        form = {"target": str(target), "k": str(k),
                **{name: json.dumps(value) if isinstance(value, dict | bool) else str(value)
                   for name, value in options.items()}}
        return _search_result(self._post("/search/image", files=files, data=form))

    def search_audio(self, sound: Path | bytes, k: int = 10, *, filter: dict[str, Any] | None = None,
                     offset: int = 0, dedup: bool | float | None = None, min_score: float | None = None,
                     order_by: OrderByInput | None = None, group_by: str = "item") -> SearchResult:
        """Search the collection's sounds with a sound clip's path or its bytes (WAV, FLAC, MP3, Ogg, M4A):
        each sound hit carries the window that matched best (`segment`) and its best `moments`."""
        data = sound.read_bytes() if isinstance(sound, Path) else sound
        options = _options(filter, offset, dedup, None, None, None, min_score, order_by, group_by)
        form = {"target": str(Modality.AUDIO), "k": str(k),
                **{name: json.dumps(value) if isinstance(value, dict | bool) else str(value)
                   for name, value in options.items()}}
        return _search_result(self._post("/search/audio", files={"file": ("query", data, "application/octet-stream")},
                                         data=form))

    def search(self, queries: list[Query], target: Modality | str = Modality.IMAGE, k: int = 10,
               explain: bool = False, *, filter: dict[str, Any] | None = None, offset: int = 0,
               dedup: bool | float | None = None, fusion: dict[str, float] | None = None,
               ask: str | None = None, ask_filter: str | None = None, min_score: float | None = None,
               order_by: OrderByInput | None = None, group_by: str = "item") -> SearchResult:
        """A composed query: the weighted sum of the terms' embeddings; `explain` fills each hit's
        `shares`; options as in search_text."""
        body = {"queries": [query.to_json() for query in queries], "target": str(target), "k": k, "explain": explain,
                **_options(filter, offset, dedup, fusion, ask, ask_filter, min_score, order_by, group_by)}
        return _search_result(self._post("/search", json=body))

    def classify(self, image: ImageInput | int, labels: list[str], templates: list[str] | None = None,
                 multi_label: bool = False) -> list[LabelProbability]:
        """Zero-shot labels, most probable first, for an image (path or bytes) or an image item (its id)."""
        body: dict[str, Any] = {"labels": labels, "templates": templates, "multi_label": multi_label,
                                **_image_source(image)}
        return [LabelProbability(**label) for label in self._post("/classify", json=body)["labels"]]

    def explain(self, queries: list[Query], item_ids: list[int], overlay: bool = True) -> list[Heatmap]:
        """Where in each image item the query lights up: one patch grid (and PNG overlay) per item."""
        body = {"queries": [query.to_json() for query in queries], "item_ids": item_ids, "overlay": overlay}
        return [Heatmap(item_id=result["item_id"], score=result["score"],
                        grid=np.asarray(result["grid"], dtype=np.float32),
                        overlay_png=base64.b64decode(result["overlay_png_b64"]) if result["overlay_png_b64"] else None)
                for result in self._post("/explain", json=body)["results"]]

    def caption(self, image: ImageInput | int) -> str:
        """A generated caption for an image (path or bytes) or an image item (its id)."""
        return str(self._post("/caption", json=_image_source(image))["caption"])

    def ask(self, image: ImageInput | int, question: str) -> AnswerResult:
        """A short answer to a question about an image (path or bytes) or an image item (its id)."""
        body = self._post("/ask", json={"question": question, **_image_source(image)})
        return AnswerResult(answer=body["answer"], score=body["score"], model=body["model"], took_ms=body["took_ms"])

    def embed_text(self, text: str) -> np.ndarray:
        """float32 (d,), unit length."""
        return np.asarray(self._post("/embed/text", json={"text": text})["embedding"], dtype=np.float32)

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """float32 (d,), unit length."""
        files = {"file": ("query", _image_bytes(image), "application/octet-stream")}
        return np.asarray(self._post("/embed/image", files=files)["embedding"], dtype=np.float32)

    def item(self, item_id: int) -> dict[str, Any]:
        return self._get(f"/items/{item_id}")

    def add_texts(self, texts: list[NewText]) -> list[int]:
        """Add text items (or replace them, by key); their ids. Needs the admin key."""
        body = {"items": [{"text": text.text, "key": text.key, "metadata": text.metadata} for text in texts]}
        return list(self._post("/items", json=body)["ids"])

    def add_images(self, images: list[NewImage]) -> list[int]:
        """Add image, video or sound items (or replace them, by key; each is told by its content); their
        ids. Needs the admin key (a sound needs a collection built with sounds)."""
        files = [("file", (f"image{number}", _image_bytes(image.image), "application/octet-stream"))
                 for number, image in enumerate(images)]
        form: dict[str, list[str]] = {
            "key": [image.key or "" for image in images], "caption": [image.caption or "" for image in images],
            "metadata": [json.dumps(image.metadata) for image in images]}
        return list(self._post("/items", files=files, data=form)["ids"])

    def edit(self, item_id: int, **changes: Any) -> dict[str, Any]:
        """Change `caption`, `text` or `metadata` of an item; the item as it is now."""
        return _json_or_raise(self._http.patch(f"{self._prefix}/items/{item_id}", json=changes))

    def delete(self, item_ids: list[int] | None = None, filter: dict[str, Any] | None = None) -> list[int]:
        """Delete items by id, or every item passing `filter`; the ids deleted."""
        body = {"ids": item_ids} if filter is None else {"filter": filter}
        return list(self._post("/items/delete", json=body)["deleted"])

    def info(self) -> dict[str, Any]:
        """The model, device and contents of this client's collection, and the memory held (GET /info)."""
        return self._get("/info")

    def collections(self) -> list[dict[str, Any]]:
        """The collections the server serves (those the key may use): name, whether ready, model, counts, memory."""
        listed: Any = _json_or_raise(self._http.get("/collections"))
        return list(listed)

    def create_collection(self, name: str, model: str | None = None, pretrained: str | None = None
                          ) -> dict[str, Any]:
        """Make an empty collection (admin key; a server with CLIPSEARCH_DATA_DIR), for `model` (default: the
        default collection's); one that exists with that model is returned as it is."""
        body = None if model is None else {"model": model, "pretrained": pretrained}
        return _json_or_raise(self._http.put(f"/collections/{quote(name, safe='')}", json=body))

    def drop_collection(self, name: str) -> None:
        """Delete a collection and everything in it (admin key); the default cannot be dropped."""
        response = self._http.delete(f"/collections/{quote(name, safe='')}")
        if not response.is_success:
            _json_or_raise(response)

    def thumbnail(self, moment: Moment) -> bytes:
        """The JPEG of a video hit's moment (its `segment`, or one of its `moments`): its first frame."""
        if moment.thumbnail is None:
            raise ValueError("a sound's window has no frame: only a video's moments have thumbnails")
        response = self._http.get(moment.thumbnail)  # a path from the server's root, its collection's included
        if response.is_error:
            _json_or_raise(response)
        return response.content

    def _get(self, path: str) -> dict[str, Any]:
        return _json_or_raise(self._http.get(self._prefix + path))

    def _post(self, path: str, **request: Any) -> dict[str, Any]:
        return _json_or_raise(self._http.post(self._prefix + path, **request))


def _options(filter: dict[str, Any] | None, offset: int, dedup: bool | float | None,
             fusion: dict[str, float] | None = None, ask: str | None = None, ask_filter: str | None = None,
             min_score: float | None = None, order_by: OrderByInput | None = None,
             group_by: str = "item") -> dict[str, Any]:
    given = {"filter": filter, "offset": offset or None, "dedup": dedup, "fusion": fusion, "ask": ask,
             "ask_filter": ask_filter, "min_score": min_score,
             "order_by": {"key": order_by, "direction": "desc"} if isinstance(order_by, str) else order_by,
             "group_by": None if group_by == "item" else group_by}
    return {name: value for name, value in given.items() if value is not None}


def _image_source(image: ImageInput | int) -> dict[str, Any]:
    if isinstance(image, int):
        return {"item_id": image}
    return {"image_b64": base64.b64encode(_image_bytes(image)).decode("ascii")}


def _json_or_raise(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        raise ClipSearchAPIError(response.status_code, str(body.get("detail")), body.get("field"), body.get("reason"))
    result: dict[str, Any] = response.json()
    return result


def _search_result(body: dict[str, Any]) -> SearchResult:
    hits = [SearchHit(id=hit["id"], score=hit["score"], modality=Modality(hit["modality"]), uri=hit["uri"],
                      caption=hit.get("caption"), text=hit.get("text"), metadata=hit.get("metadata") or {},
                      shares=hit.get("shares"), duplicates=hit.get("duplicates"), ranks=hit.get("ranks"),
                      fused=hit.get("fused"), ocr_matches=hit.get("ocr_matches"), answer=hit.get("answer"),
                      answer_score=hit.get("answer_score"),
                      segment=None if hit.get("segment") is None else Moment(**hit["segment"]),
                      moments=None if hit.get("moments") is None else [Moment(**moment) for moment in hit["moments"]])
            for hit in body["results"]]
    asked = body.get("asked")
    return SearchResult(results=hits, took_ms=body["took_ms"], truncated=body.get("truncated", []),
                        matched=body.get("matched", 0), more=body.get("more", False),
                        asked=None if asked is None else Asked(**asked))

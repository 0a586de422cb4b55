"""All server settings, read from CLIPSEARCH_* environment variables; built in the app factory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipsearch.config import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    DEFAULT_RRF_K,
    DEFAULT_VQA_MODEL,
    GENERATION_TYPES,
    AudioSampling,
    Batching,
    CaptionConfig,
    CompactionPolicy,
    QueryLimits,
    VideoSampling,
    VqaConfig,
    WriteLimits,
)
from clipsearch.errors import KeyFileError
from clipsearch.store.keys import Rate

# The defaults of the limits and of batching are the core's own: no number is written twice.
_LIMITS = QueryLimits()
_VIDEO = VideoSampling()
_SOUND = AudioSampling()
_BATCHING = Batching()
_CAPTIONS = CaptionConfig()
_VQA = VqaConfig()
_COMPACTION = CompactionPolicy()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPSEARCH_", frozen=True)

    bundle_path: Path = Field(Path("bundle"), description="The bundle directory the indexer wrote: the one "
                              "collection, 'default', when data_dir is not set.")
    data_dir: Path | None = Field(None, description="A folder of collections, each a bundle in a subfolder named "
                                  "after it (`indexer build --collection NAME`, or PUT /collections/NAME); the one "
                                  "named 'default' answers the routes without /collections/NAME. Set, bundle_path "
                                  "is not used.")
    memory_budget_mb: float | None = Field(None, gt=0, description="Most memory the models and the collections' "
                                           "indices may hold together; a collection that would pass it is refused "
                                           "at load, with the figures (its routes answer 503 saying so). Unset: no "
                                           "limit.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    devices: str = Field("", description="Where exact and GPU indices are held, split across them when several: "
                         "'cuda:0,cuda:1'; empty: every visible GPU when the model runs on one, else its device.")
    checkpoint: Path | None = Field(None, description="The local checkpoint file, for bundles built from one.")
    verify_checksums: bool = Field(True, description="Hash every bundle file at start-up (slower on huge bundles).")
    max_k: int = Field(_LIMITS.max_k, ge=1, description="Most results one query may ask for.")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest request body, uploads included (413 above).")
    max_pixels: int = Field(_LIMITS.max_pixels, ge=1, description="Largest query image, in pixels.")
    video_max_seconds: float = Field(_VIDEO.max_seconds, gt=0, allow_inf_nan=False, description=(
        "Longest video written to a collection (POST /items); longer ones are refused (413 naming the file)."))
    video_timeout_s: float = Field(_VIDEO.decode_timeout_s, gt=0, allow_inf_nan=False, description=(
        "Longest a video written to a collection may take to read; past it, refused (413 naming the file)."))
    audio_max_seconds: float = Field(_SOUND.max_seconds, gt=0, allow_inf_nan=False, description=(
        "Longest sound written to a collection (POST /items); longer ones are refused (413 naming the file)."))
    audio_timeout_s: float = Field(_SOUND.decode_timeout_s, gt=0, allow_inf_nan=False, description=(
        "Longest a sound written to a collection may take to read; past it, refused (413 naming the file)."))
    max_query_terms: int = Field(_LIMITS.max_terms, ge=1, description="Most terms in one composed query.")
    max_text_chars: int = Field(_LIMITS.max_text_chars, ge=1, description="Longest query text, in characters.")
    max_labels: int = Field(_LIMITS.max_labels, ge=1, description="Most labels one /classify request may score.")
    max_templates: int = Field(_LIMITS.max_templates, ge=1, description="Most prompt templates per /classify "
                                                                        "request.")
    max_offset: int = Field(_LIMITS.max_offset, ge=0, le=100_000, description="Deepest page a search may ask for "
                            "(offset); results up to offset + k are fetched for it.")
    max_cutoff_results: int = Field(_LIMITS.max_cutoff_results, ge=1, le=1_000_000, description="Most results a "
                                    "search with min_score or order_by gathers to count and sort them; one that "
                                    "passes more is refused (422 naming min_score or order_by).")
    max_query_audio_s: float = Field(_LIMITS.max_audio_seconds, gt=0, le=3600, allow_inf_nan=False, description=(
        "Longest sound clip a query may upload (POST /search/audio); longer ones are refused (413 naming the file)."))
    rrf_k: int = Field(DEFAULT_RRF_K, ge=1, le=10_000, description="The constant K of reciprocal rank fusion in "
                       "hybrid searches: an item scores 1/(K + rank) per list; a larger K flattens the ranks' weight.")
    filter_cache_size: int = Field(64, ge=1, description="Filters whose matching items are kept, per worker (least "
                                   "recently used dropped first).")
    max_explained: int = Field(_LIMITS.max_explained, ge=1, description="Most items one /explain request may "
                                                                        "explain.")
    caption_model: str = Field(DEFAULT_CAPTION_MODEL, description="The open_clip CoCa model /caption uses; loaded "
                                                                  "on the first request (needs the [caption] extra).")
    caption_pretrained: str | None = Field(DEFAULT_CAPTION_PRETRAINED, description="Its pretrained tag; empty with "
                                                                                   "caption_checkpoint.")
    caption_checkpoint: Path | None = Field(None, description="A local checkpoint file for the caption model.")
    caption_generation: Literal["beam_search", "top_k", "top_p"] = Field(
        "beam_search", description=f"How captions are decoded: {', '.join(GENERATION_TYPES)}.")
    caption_max_tokens: int = Field(_CAPTIONS.max_tokens, ge=7, le=76, description="Longest caption, in tokens.")
    caption_timeout_s: float = Field(120.0, gt=0, description="Longest a /caption request may wait for its caption "
                                                              "(503).")
    vqa_model: str = Field(DEFAULT_VQA_MODEL, description="The BLIP question-answering model /ask and a search's "
                           "`ask` use: a Hugging Face repository id or a local directory; loaded on the first "
                           "question (needs the [vqa] extra).")
    vqa_timeout_s: float = Field(120.0, gt=0, description="Longest a question may wait for its answers, the model's "
                                                          "first load included (503).")
    vqa_max_question_chars: int = Field(_VQA.max_question_chars, ge=1, description="Longest question, in "
                                                                                  "characters (422).")
    vqa_max_hits: int = Field(_VQA.max_hits, ge=1, description="Most results a search with `ask` may return, each "
                                                               "answered by the model (422 on k above).")
    decode_timeout_s: float = Field(_LIMITS.decode_timeout_s, gt=0,
                                    description="Longest a query image may take to decode (422).")
    encode_timeout_s: float = Field(_LIMITS.encode_timeout_s, gt=0,
                                    description="Longest a query may wait for the model (503).")
    max_batch: int = Field(_BATCHING.max_batch, ge=1,
                           description="Most concurrent queries batched into one forward pass or search.")
    batch_window_ms: float = Field(_BATCHING.window_s * 1000, ge=0, le=1000,
                                   description="How long a batch waits for more queries after its first; 0 takes "
                                               "only those already waiting.")
    backend: Literal["auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8"] = Field(
        "auto", description="What runs the model: 'onnx' (ONNX Runtime, CPU only, needs the [onnx] extra), "
                            "'openvino' (OpenVINO on the same export, needs the [openvino] extra), either with "
                            "'-int8' (quantised with scales calibrated on int8_calibration: faster), 'torch', or "
                            "'auto' (on a CPU the faster of onnx and openvino as timed at start-up, or whichever "
                            "is installed; else torch).")
    onnx_cache: Path | None = Field(None, description="Where ONNX exports are cached (default "
                                                      "~/.cache/clipsearch/onnx).")
    int8_calibration: Path | None = Field(None, description="A folder of the collection's own images (and caption "
                                          ".txt files) that the int8 backends (onnx-int8, openvino-int8) are "
                                          "calibrated on, such as the images folder it was built from; they refuse "
                                          "to start without.")
    threads: int | None = Field(None, ge=1, description="Threads per forward pass; by default the cores available "
                                                        "divided by server_workers.")
    keep_torch_weights: bool = Field(False, description="Keep the PyTorch model in memory beside ONNX Runtime's "
                                     "sessions (by default it is freed once they pass their self-check, so the "
                                     "weights are held once; explain's heatmaps build it again on first use).")
    text_trim: bool = Field(True, description="Run the text tower on each batch's real length where that is exact "
                                              "(off only to compare speeds).")
    text_language: str | None = Field(None, description="The language code of queries, for a model whose tokenizer "
                                      "takes one (NLLB-CLIP: 'zho_Hans', 'eng_Latn'; unset: the tokenizer's own "
                                      "default, eng_Latn). Other models refuse it.")
    cuda_graphs: bool = Field(True, description="On a GPU, replay the model from CUDA graphs captured at start-up.")
    server_workers: int = Field(1, ge=1, description="Server processes `python -m app` starts; each loads the "
                                                     "model and the bundle.")
    admin_key: SecretStr | None = Field(None, description="When set, writes (POST/PATCH/DELETE /items) are allowed "
                                        "with this key in the X-Admin-Key header; unset, every write is refused "
                                        "(403).")
    max_write_items: int = Field(256, ge=1, description="Most items one write request may add or delete by id.")
    max_metadata_kb: float = Field(64.0, gt=0, description="Largest metadata object one item may carry, as JSON.")
    auto_compact: bool = Field(True, description="Fold live changes into the base in the background once they "
                                                 "reach CLIPSEARCH_COMPACT_MIN_CHANGES and CLIPSEARCH_COMPACT_FRACTION "
                                                 "of it (one worker compacts; every worker then loads the result).")
    compact_min_changes: int = Field(_COMPACTION.min_changes, ge=1, description="Fewest live and hidden items a "
                                                                                "background compaction folds in.")
    compact_fraction: float = Field(_COMPACTION.fraction, gt=0, description="Share of the base the live and hidden "
                                                                            "items reach before a compaction is due.")
    retrain_fraction: float = Field(_COMPACTION.retrain_fraction, gt=0, description="Share of an IVF index's "
                                    "training rows added since, past which a compaction trains it again and measures "
                                    "its recall again.")
    write_lock_timeout_s: float = Field(10.0, gt=0, description="Longest a write waits for the bundle's write lock "
                                        "while another process (a compaction, a sync, another server) holds it; "
                                        "then it is answered 503 with Retry-After, and nothing is written.")
    reload_poll_s: float = Field(0.5, gt=0, description="How often each worker checks whether the bundle was "
                                                        "compacted or rebuilt, to load the new one.")
    api_key: SecretStr | None = Field(None, description="When set, required in the X-API-Key header on every "
                                                        "endpoint but /health, /ready and the page itself.")
    keys_file: Path | None = Field(None, description="A file of named keys with scopes (read, write, admin), "
                                   "collections, filters and rates, made with `python -m indexer keys`; read again "
                                   "whenever it changes. Set, every endpoint but /health, /ready and the page needs "
                                   "a key in X-API-Key (CLIPSEARCH_API_KEY and CLIPSEARCH_ADMIN_KEY still work).")
    rate_limit: str | None = Field(None, description="Requests per second (or minute) each caller may make: "
                                   "'20/s', '600/min'; per client address without a key, per key with one (a key's "
                                   "own --rate wins). 429 with Retry-After above; unset: no limit.")
    rate_limit_file: Path | None = Field(None, description="Where the workers of one server share their token "
                                         "buckets (SQLite); unset: a file in the temporary directory named after "
                                         "the bundle.")
    cors_origins: str = Field("", description="Comma-separated origins allowed to call the API from a browser; "
                                              "none by default.")
    keep_alive_s: float = Field(75.0, gt=0, description="How long an idle keep-alive connection stays open. Longer "
                                                         "than a proxy's idle timeout (60 s on common load "
                                                         "balancers), so the server never closes a connection "
                                                         "the proxy is about to reuse.")
    public_docs: bool = Field(False, description="With an API key set, serve /docs, /redoc and /openapi.json "
                                                 "without it (the schema holds no data, only the API's shape).")
    header_timeout_s: float = Field(10.0, gt=0, description="Longest a client may take to send a request's line and "
                                                            "headers, from their first byte (408 above).")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest a client may pause while sending a request body "
                                                          "(408 above).")
    max_connections: int = Field(1000, ge=1, description="Most open connections and requests in progress; more are "
                                                         "answered 503 at once.")
    host: str = Field("127.0.0.1", description="Address `python -m app` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m app` listens on.")
    public_url: str | None = Field(None, description="Where people open the page, said in one log line once the "
                                   "server is ready (compose sets the published port); unset: this host and port.")

    @property
    def page_url(self) -> str:
        """The page's address as a user types it: public_url, else this server's host and port."""
        if self.public_url:
            return self.public_url
        host = "localhost" if self.host in ("0.0.0.0", "::", "127.0.0.1", "") else self.host
        return f"http://{host}:{self.port}"

    @field_validator("data_dir", "memory_budget_mb", "api_key", "admin_key", "caption_pretrained",
                     "caption_checkpoint", "text_language",
                     "int8_calibration", "keys_file", "rate_limit", "rate_limit_file",
                     "public_url", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        # Compose passes unset variables as empty strings; an empty key must not lock everyone out.
        return None if value == "" else value

    @field_validator("rate_limit")
    @classmethod
    def _a_rate(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Rate.parse(value)
            except KeyFileError as error:
                raise ValueError(error.reason) from None
        return value

    @property
    def allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def intra_op_threads(self) -> int:
        """`threads`, or the cores this process may run on shared among the workers, so that two
        workers on two cores do not fight over four threads."""
        if self.threads is not None:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.server_workers)

    @property
    def write_limits(self) -> WriteLimits:
        return WriteLimits(max_items=self.max_write_items, max_key_chars=WriteLimits().max_key_chars,
                           max_metadata_bytes=int(self.max_metadata_kb * 1024))

    @property
    def video_bounds(self) -> VideoSampling:
        """The bounds on reading a video written to a collection (each collection cuts as it was built)."""
        return VideoSampling(max_seconds=self.video_max_seconds, decode_timeout_s=self.video_timeout_s)

    @property
    def audio_bounds(self) -> AudioSampling:
        """The bounds on reading a sound written to a collection (each collection cuts as it was built)."""
        return AudioSampling(max_seconds=self.audio_max_seconds, decode_timeout_s=self.audio_timeout_s)

    @property
    def compaction(self) -> CompactionPolicy:
        return CompactionPolicy(self.compact_min_changes, self.compact_fraction, self.retrain_fraction)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def limits(self) -> QueryLimits:
        return QueryLimits(max_k=self.max_k, max_terms=self.max_query_terms, max_text_chars=self.max_text_chars,
                           max_pixels=self.max_pixels, decode_timeout_s=self.decode_timeout_s,
                           encode_timeout_s=self.encode_timeout_s, max_labels=self.max_labels,
                           max_templates=self.max_templates, max_explained=self.max_explained,
                           max_offset=self.max_offset, max_cutoff_results=self.max_cutoff_results,
                           max_audio_seconds=self.max_query_audio_s)

    @property
    def captions(self) -> CaptionConfig:
        return CaptionConfig(model=self.caption_model, pretrained=self.caption_pretrained,
                             checkpoint=self.caption_checkpoint, device=self.device,
                             generation=self.caption_generation, max_tokens=self.caption_max_tokens)

    @property
    def vqa(self) -> VqaConfig:
        return VqaConfig(model=self.vqa_model, device=self.device, max_question_chars=self.vqa_max_question_chars,
                         max_hits=self.vqa_max_hits)

    @property
    def batching(self) -> Batching:
        return Batching(max_batch=self.max_batch, window_s=self.batch_window_ms / 1000)

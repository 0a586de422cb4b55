"""All server settings, read from CLIPSEARCH_* environment variables; built in the app factory."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clipsearch.images import DEFAULT_MAX_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPSEARCH_", frozen=True)

    bundle_path: Path = Field(Path("bundle"), description="The bundle directory the indexer wrote.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    checkpoint: Path | None = Field(None, description="The local checkpoint file, for bundles built from one.")
    verify_checksums: bool = Field(True, description="Hash every bundle file at start-up (slower on huge bundles).")
    max_k: int = Field(100, ge=1, description="Most results one query may ask for.")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest request body, uploads included (413 above).")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest query image, in pixels.")
    max_query_terms: int = Field(16, ge=1, description="Most terms in one composed query.")
    max_text_chars: int = Field(10_000, ge=1, description="Longest query text, in characters.")
    decode_timeout_s: float = Field(10.0, gt=0, description="Longest a query image may take to decode (422).")
    encode_timeout_s: float = Field(30.0, gt=0, description="Longest a query may wait for the model (503).")
    max_batch: int = Field(64, ge=1, description="Most concurrent queries batched into one forward pass or search.")
    batch_window_ms: float = Field(0.0, ge=0, le=1000, description="How long a batch waits for more queries after "
                                                                  "its first; 0 takes only those already waiting.")
    cuda_graphs: bool = Field(True, description="On a GPU, replay the model from CUDA graphs captured at start-up.")
    server_workers: int = Field(1, ge=1, description="Server processes `python -m app` starts; each loads the "
                                                     "model and the bundle.")
    api_key: SecretStr | None = Field(None, description="When set, required in the X-API-Key header on every "
                                                        "endpoint but /health, /ready and the page itself.")
    cors_origins: str = Field("", description="Comma-separated origins allowed to call the API from a browser; "
                                              "none by default.")
    keep_alive_s: float = Field(75.0, gt=0, description="How long an idle keep-alive connection stays open. Longer "
                                                         "than a proxy's idle timeout (60 s on common load "
                                                         "balancers), so the server never closes a connection "
                                                         "the proxy is about to reuse.")
    host: str = Field("127.0.0.1", description="Address `python -m app` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m app` listens on.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_means_none(cls, value: object) -> object:
        # Compose passes unset variables as empty strings; an empty key must not lock everyone out.
        return None if value == "" else value

    @property
    def allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

"""Access control, CORS, path traversal, time limits and hostile files, against the real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.main import create_app
from app.settings import Settings
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.search.pipeline import Pending
from clipsearch.search.uploads import DECODE_WORKERS
from clipsearch.store.bundle import load_bundle
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.imagefiles import BAD_FILES, GOOD_FILES, good_and_bad_files, image_bytes, noise_image
from tests.support.serving import serve

KEY = "correct horse battery staple"
ALLOWED_ORIGIN = "https://photos.example"


@pytest.fixture(scope="module")
def locked_url(bundle_path: Path) -> Iterator[str]:
    settings = Settings(bundle_path=bundle_path, device="cpu", api_key=KEY,  # type: ignore[call-arg]
                        cors_origins=f"{ALLOWED_ORIGIN}, https://other.example")
    with serve(settings) as url:
        yield url


PROTECTED = [("POST", "/search/text", {"json": {"text": "dog"}}), ("POST", "/search", {"json": {"queries": []}}),
             ("POST", "/search/image", {"files": {"file": ("a.png", image_bytes(noise_image(1)))}}),
             ("POST", "/embed/text", {"json": {"text": "dog"}}), ("GET", "/items/0", {}), ("GET", "/items/0/image", {}),
             ("GET", "/info", {}), ("GET", "/metrics", {})]
ALLOWED_STATUS = {path: {200} for _, path, _ in PROTECTED} | {"/search": {422}}
"""What each request gets with the right key: an answer, or for an empty composed query, its own refusal."""


@pytest.mark.parametrize(("method", "path", "request_options"), PROTECTED)
def test_with_a_key_set_every_api_endpoint_requires_it(locked_url: str, method: str, path: str,
                                                        request_options: dict[str, object]) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}):
        refused = httpx.request(method, locked_url + path, headers=headers, **request_options)  # type: ignore[arg-type]
        assert refused.status_code == 401
        assert refused.json()["field"] == "X-API-Key"
    allowed = httpx.request(method, locked_url + path, headers={"X-API-Key": KEY}, **request_options)  # type: ignore[arg-type]
    assert allowed.status_code in ALLOWED_STATUS[path], (path, allowed.status_code, allowed.text[:200])


@pytest.mark.parametrize("path", ["/health", "/ready", "/", "/static/app.js"])
def test_health_readiness_and_the_page_stay_open(locked_url: str, path: str) -> None:
    assert httpx.get(locked_url + path).status_code == 200
    assert httpx.head(locked_url + path).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_with_a_key_set_the_api_docs_require_it_too(locked_url: str, path: str) -> None:
    refused = httpx.get(locked_url + path)
    assert refused.status_code == 401 and refused.json()["field"] == "X-API-Key"
    assert httpx.get(locked_url + path, headers={"X-API-Key": KEY}).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_public_docs_serve_the_api_docs_without_the_key(bundle_path: Path, path: str) -> None:
    settings = Settings(bundle_path=bundle_path, device="cpu", api_key=KEY, public_docs=True)  # type: ignore[call-arg]
    with serve(settings) as url:
        assert httpx.get(url + path).status_code == 200
        assert httpx.post(f"{url}/search/text", json={"text": "dog"}).status_code == 401


def test_the_openapi_schema_documents_the_key(locked_url: str) -> None:
    schema = httpx.get(f"{locked_url}/openapi.json", headers={"X-API-Key": KEY}).json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "Required when the server sets CLIPSEARCH_API_KEY or CLIPSEARCH_KEYS_FILE: that key, or a "
                       "key made with `python -m indexer keys create`."}


def test_cors_allows_only_the_configured_origins(locked_url: str, http: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"}
    allowed = httpx.options(f"{locked_url}/search/text", headers={"Origin": ALLOWED_ORIGIN, **preflight})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = httpx.options(f"{locked_url}/search/text", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    by_default = http.get("/health", headers={"Origin": ALLOWED_ORIGIN})
    assert "access-control-allow-origin" not in by_default.headers


@pytest.mark.parametrize("path", [
    "/items/-1", "/items/-1/image", "/items/99999999999999999999999/image", "/items/1e3/image",
    "/items/..%2F..%2Fetc%2Fpasswd/image", "/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/items/0/image/..%2F..%2F..%2Fetc%2Fpasswd", "/static/..%2F..%2Fapp%2Fsettings.py", "/static/../settings.py",
    "/static/%2e%2e/%2e%2e/pyproject.toml",
])
def test_crafted_paths_never_reach_the_filesystem(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert b"root:" not in response.content and b"BaseSettings" not in response.content
    assert b"[build-system]" not in response.content


def test_an_image_swapped_for_a_symlink_after_indexing_is_not_served(tmp_path: Path) -> None:
    build(tiny_config(tmp_path / "bundle", images=make_image_corpus(tmp_path / "images", 3)))
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes(noise_image(99)))
    bundle = load_bundle(tmp_path / "bundle")
    victim = next(item for item in bundle.items)
    bundle.close()
    Path(victim.uri).unlink()
    Path(victim.uri).symlink_to(secret)
    with serve(Settings(bundle_path=tmp_path / "bundle", device="cpu")) as url:  # type: ignore[call-arg]
        response = httpx.get(f"{url}/items/{victim.id}/image")
        assert response.status_code == 404 and "symbolic link" in response.json()["reason"]
        assert response.content != secret.read_bytes()


def test_an_image_stuck_longer_than_the_decode_limit_is_refused(bundle_path: Path) -> None:
    app = create_app(Settings(bundle_path=bundle_path, device="cpu", decode_timeout_s=0.2))  # type: ignore[call-arg]
    with serve(Settings(), app=app) as url:  # type: ignore[call-arg]
        service = app.state.server.collection("default").require()
        release = threading.Event()
        for _ in range(DECODE_WORKERS):
            service.uploads._pool.submit(release.wait)  # every decoder busy with other uploads
        try:
            response = httpx.post(f"{url}/search/image", files={"file": ("a.png", image_bytes(noise_image(3)))},
                                  timeout=30)
        finally:
            release.set()
        assert response.status_code == 422 and response.json()["field"] == "file"
        assert "longer than 0.2 s to decode" in response.json()["reason"]


def test_a_query_stuck_behind_the_model_longer_than_the_limit_answers_503(bundle_path: Path) -> None:
    app = create_app(Settings(bundle_path=bundle_path, device="cpu", encode_timeout_s=0.2))  # type: ignore[call-arg]
    with serve(Settings(), app=app) as url:  # type: ignore[call-arg]
        service = app.state.server.collection("default").require()
        release, encode_texts = threading.Event(), service.encoder.encode_texts

        def slow_encode(texts: Sequence[str]) -> np.ndarray:
            release.wait()
            return encode_texts(texts)
        service.encoder.encode_texts = slow_encode  # type: ignore[method-assign]
        service.pipeline.embed(Modality.TEXT, Pending("another request"))  # holds the text tower (one pass at a time)
        try:
            response = httpx.post(f"{url}/search/text", json={"text": "dog"}, timeout=30)
        finally:
            service.encoder.encode_texts = encode_texts  # type: ignore[method-assign]
            release.set()
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "did not finish within 0.2 s" in response.json()["reason"]
        assert httpx.post(f"{url}/search/text", json={"text": "dog"}, timeout=30).status_code == 200


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return good_and_bad_files(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", sorted(GOOD_FILES | BAD_FILES))
def test_every_odd_or_hostile_upload_is_answered_or_refused_clearly(http: httpx.Client, hostile_files: dict[str, Path],
                                                                    name: str) -> None:
    response = http.post("/search/image", files={"file": (name, hostile_files[name].read_bytes())})
    if name in GOOD_FILES:
        assert response.status_code == 200 and response.json()["results"]
    else:
        assert response.status_code in (413, 422) and response.json()["field"] == "file"
        assert response.json()["reason"]


def test_unicode_and_emoji_survive_indexing_and_search(tmp_path: Path, http: httpx.Client) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Ein Hund läuft am Strand 🐕🌊\n東京の夜景\nbroken\x00line\n", encoding="utf-8")
    images = make_image_corpus(tmp_path / "images", 2)
    next(images.rglob("*.txt")).write_text("café au lait ☕ with a NUL\x00 inside", encoding="utf-8")
    summary = build(tiny_config(tmp_path / "bundle", images=images, texts=texts))
    assert summary.indexed == {"image": 2, "text": 2}
    assert [entry["reason"] for entry in summary.report["skipped"]] == ["line 3: text contains NUL characters"]
    with serve(Settings(bundle_path=tmp_path / "bundle", device="cpu")) as url:  # type: ignore[call-arg]
        hits = httpx.post(f"{url}/search/text", json={"text": "東京の夜景", "target": "text", "k": 1}).json()
        assert hits["results"][0]["text"] == "東京の夜景"
        captions = {hit["caption"] for hit in httpx.post(f"{url}/search/text", json={"text": "☕"}).json()["results"]}
        assert "café au lait ☕ with a NUL inside" in captions

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app import healthcheck, resources
from app.main import create_app
from app.settings import Settings
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import serve


def test_health_and_ready_once_loaded(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"status": "ready"}


def test_ready_is_503_until_the_model_and_bundle_are_loaded(bundle_path: Path) -> None:
    app = create_app(Settings(bundle_path=bundle_path, device="cpu"))  # type: ignore[call-arg]

    async def ask() -> httpx.Response:
        # No lifespan runs here, so nothing gets loaded: the state before loading finishes.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/ready")

    response = asyncio.run(ask())
    assert response.status_code == 503 and "loading" in response.json()["reason"]


def test_info_describes_model_bundle_and_device(http: httpx.Client) -> None:
    info = http.get("/info").json()
    assert info["model"] == "tiny" and info["pretrained"] is None and info["embedding_dim"] == 32
    assert info["counts"] == {"image": 30, "text": 25}
    assert info["indices"]["image"]["factory"] == "Flat" and info["indices"]["image"]["exact"] is True
    assert info["device"] == "cpu" and info["cuda_graphs"] is False
    assert info["backend"] == "torch" and info["text_trim"] is True and info["torch_weights"] is True
    assert info["backend_cosine"] is None
    assert info["threads"] == len(os.sched_getaffinity(0))  # one worker: every core this process may use
    assert info["worker"] == os.getpid()  # served from this process
    assert info["writes"]["enabled"] is False and info["writes"]["accepted"] is True  # no admin key set
    assert info["writes"]["disk"]["free_bytes"] > 0 and Path(info["writes"]["disk"]["path"]).is_dir()
    # The start-up warm-up already ran one query of each kind through every stage.
    assert set(info["mean_batch"]) == {"encode-text", "encode-image", "search-image", "search-text"}
    assert all(mean >= 1 for mean in info["mean_batch"].values())


def test_a_server_on_onnx_runtime_holds_the_weights_once_until_a_heatmap_needs_pytorchs(
        bundle_path: Path, tmp_path: Path) -> None:
    settings = dict(bundle_path=bundle_path, device="cpu", backend="onnx", onnx_cache=tmp_path / "onnx")
    with serve(Settings(**settings)) as url:  # type: ignore[arg-type]
        info = httpx.get(f"{url}/info").json()
        assert info["backend"] == "onnx" and info["torch_weights"] is False
        assert info["backend_cosine"] > 0.9999 and info["backend_startup_ms"] is None  # named, not timed by auto
        found = httpx.post(f"{url}/search/text", json={"text": "a photo", "k": 1}).json()["results"]
        heatmap = httpx.post(f"{url}/explain", json={"queries": [{"text": "a photo"}],
                                                     "item_ids": [found[0]["id"]]}, timeout=60)
        assert heatmap.status_code == 200, heatmap.text
        assert httpx.get(f"{url}/info").json()["torch_weights"] is True  # built again for the heatmap
    with serve(Settings(**settings, keep_torch_weights=True)) as url:  # type: ignore[arg-type]
        assert httpx.get(f"{url}/info").json()["torch_weights"] is True


def test_metrics_count_requests_and_time_encode_and_search_apart(http: httpx.Client) -> None:
    http.post("/search/text", json={"text": "metrics please"})
    text = http.get("/metrics").text
    assert 'clipsearch_http_requests_total{endpoint="/search/text",method="POST",status="200"}' in text
    assert 'clipsearch_http_request_duration_seconds_bucket{endpoint="/search/text"' in text
    assert 'clipsearch_encode_duration_seconds_count{modality="text"}' in text
    assert 'clipsearch_batches_total{stage="encode-text"}' in text
    assert 'clipsearch_batched_queries_total{stage="search-image"}' in text
    assert 'clipsearch_search_duration_seconds_count{target="image"}' in text


def test_the_openapi_schema_documents_every_endpoint_with_examples(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    for path in ("/search/text", "/search/image", "/search", "/items/{item_id}", "/items/{item_id}/image",
                 "/embed/text", "/embed/image", "/health", "/ready", "/info", "/metrics"):
        assert path in schema["paths"], path
    assert schema["components"]["schemas"]["TextSearchRequest"]["examples"]
    assert schema["components"]["schemas"]["ComposedSearchRequest"]["examples"]
    assert http.get("/docs").status_code == 200


def test_settings_come_from_prefixed_environment_variables(monkeypatch: object, tmp_path: Path) -> None:
    import pytest

    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("CLIPSEARCH_BUNDLE_PATH", str(tmp_path))
        patch.setenv("CLIPSEARCH_MAX_K", "7")
        settings = Settings()  # type: ignore[call-arg]
    finally:
        patch.undo()
    assert settings.bundle_path == tmp_path and settings.max_k == 7


def test_once_ready_one_log_line_says_where_to_open_the_page(bundle_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(bundle_path=bundle_path, device="cpu", public_url="http://localhost:18123")  # type: ignore[call-arg]
    with caplog.at_level(logging.INFO, logger="app.server"), serve(settings) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
    assert [record.getMessage() for record in caplog.records if "open http" in record.getMessage()] == \
        ["clipsearch is ready: open http://localhost:18123"]


@pytest.mark.parametrize(("host", "public_url", "page"), [("0.0.0.0", None, "http://localhost:8123"),
                                                          ("127.0.0.1", "", "http://localhost:8123"),
                                                          ("search.lan", None, "http://search.lan:8123"),
                                                          ("0.0.0.0", "https://photos.example", "https://photos.example")])
def test_the_page_url_is_the_public_one_else_this_host_and_port(tmp_path: Path, host: str, public_url: str | None,
                                                                 page: str) -> None:
    settings = Settings(bundle_path=tmp_path, host=host, port=8123, public_url=public_url)  # type: ignore[call-arg]
    assert settings.page_url == page


def sample(metrics_text: str, name: str, label: str) -> float:
    """One sample's value from Prometheus text, 0 when absent: e.g. ('…_count', 'modality="text"')."""
    match = re.search(rf"^{name}{{{label}}} (\S+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_the_encode_metric_counts_one_forward_pass_per_embedded_term_on_every_route(http: httpx.Client) -> None:
    def counts() -> tuple[float, float, float]:
        text = http.get("/metrics").text
        return (sample(text, "clipsearch_encode_duration_seconds_count", 'modality="text"'),
                sample(text, "clipsearch_encode_duration_seconds_count", 'modality="image"'),
                sample(text, "clipsearch_search_duration_seconds_count", 'target="image"'))

    before = counts()
    image = base64.b64encode(image_bytes(noise_image(4))).decode()
    assert http.post("/search", json={"queries": [{"text": "a"}, {"image_b64": image}, {"item_id": 0}]}).is_success
    assert http.post("/embed/text", json={"text": "b"}).is_success
    assert http.post("/search/image", files={"file": ("x.png", image_bytes(noise_image(5)))}).is_success
    after = counts()
    # text: the composed term and the embed; image: the composed term and the upload (the stored
    # item needs no pass); searches: the composed query and the upload.
    assert tuple(b - a for a, b in zip(before, after, strict=True)) == (2.0, 2.0, 2.0)


def test_stopping_the_server_does_not_wait_for_a_model_still_loading(bundle_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    release, loading = threading.Event(), threading.Event()
    load_encoder = resources.load_encoder

    def slow_load(*arguments: Any, **options: Any) -> Any:
        loading.set()
        release.wait()
        return load_encoder(*arguments, **options)
    monkeypatch.setattr(resources, "load_encoder", slow_load)
    application = create_app(Settings(bundle_path=bundle_path, device="cpu"))  # type: ignore[call-arg]
    server = uvicorn.Server(uvicorn.Config(application, port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert loading.wait(30)
    server.should_exit = True
    thread.join(timeout=15)
    stopped = not thread.is_alive()
    [collection] = application.state.server.collections()
    release.set()  # the load now finishes, finds the server gone and closes what it loaded
    for loader in [thread for thread in threading.enumerate() if thread.name == "load"]:
        loader.join(timeout=60)
        assert not loader.is_alive()
    assert stopped
    assert collection.service is None and collection.problem == "the collection was closed"


def test_the_container_healthcheck_passes_once_ready_and_fails_when_nothing_answers(
        server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_PORT", server_url.rsplit(":", 1)[1])
    assert healthcheck.main() == 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CLIPSEARCH_PORT", str(unused.getsockname()[1]))  # bound, never listening
        assert healthcheck.main() == 1


def test_a_server_on_onnx_runtime_says_so_and_answers_as_pytorch_does(bundle_path: Path, http: httpx.Client,
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    settings = Settings(bundle_path=bundle_path, device="cpu", backend="onnx", onnx_cache=tmp_path)
    query = {"text": "a red square", "target": "image", "k": 10}
    with serve(settings) as url, httpx.Client(base_url=url, timeout=60) as onnx_http:
        assert onnx_http.get("/info").json()["backend"] == "onnx"
        found = onnx_http.post("/search/text", json=query).json()["results"]
    expected = http.post("/search/text", json=query).json()["results"]
    assert [hit["id"] for hit in found] == [hit["id"] for hit in expected]
    assert [hit["score"] for hit in found] == pytest.approx([hit["score"] for hit in expected], abs=1e-5)


def test_threads_default_to_the_cores_shared_among_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert Settings(bundle_path=Path("b"), server_workers=1).intra_op_threads == 8
    assert Settings(bundle_path=Path("b"), server_workers=3).intra_op_threads == 2
    assert Settings(bundle_path=Path("b"), server_workers=16).intra_op_threads == 1
    assert Settings(bundle_path=Path("b"), server_workers=3, threads=5).intra_op_threads == 5

"""The Dockerfile and compose files, checked as far as a machine without a Docker engine can."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def stages(dockerfile: str) -> dict[str, str]:
    """Each build stage's text, by its name."""
    parts = re.split(r"^FROM\s+", dockerfile, flags=re.MULTILINE)[1:]
    return {part.split()[2] if len(part.split()) > 2 and part.split()[1].upper() == "AS" else part.split()[0]: part
            for part in parts}


def test_compose_indexes_then_serves_on_port_8000() -> None:
    services = load("docker-compose.yml")["services"]
    assert services["api"]["depends_on"] == {"indexer": {"condition": "service_completed_successfully"}}
    assert services["api"]["ports"] == ["${CLIPSEARCH_PUBLISH_PORT:-8000}:8000"]
    assert services["api"]["restart"] == "unless-stopped" and services["indexer"]["restart"] == "no"
    assert services["api"]["healthcheck"]["test"] == ["CMD", "python", "-m", "app.healthcheck"]
    assert "--if-changed" in services["indexer"]["command"][-1]


def test_compose_volumes_share_the_bundle_and_the_model_cache() -> None:
    compose = load("docker-compose.yml")
    assert set(compose["volumes"]) == {"bundle", "model-cache"}
    for service in ("indexer", "api"):
        mounts = compose["services"][service]["volumes"]
        assert any(mount.startswith("bundle:/bundle") for mount in mounts)
        assert "model-cache:/cache" in mounts
    assert "bundle:/bundle:ro" in compose["services"]["api"]["volumes"]


def test_every_server_variable_in_compose_is_a_setting_and_vice_versa() -> None:
    environment = load("docker-compose.yml")["services"]["api"]["environment"]
    known = {f"CLIPSEARCH_{name.upper()}" for name in Settings.model_fields}
    configured = {name for name in environment if name.startswith("CLIPSEARCH_")}
    assert configured <= known, configured - known
    # Left to their defaults: a checkpoint path, the pixel limit, the export cache (the image sets it)
    # and the thread count (computed from the cores and the workers).
    assert known - configured <= {"CLIPSEARCH_CHECKPOINT", "CLIPSEARCH_MAX_PIXELS", "CLIPSEARCH_ONNX_CACHE",
                                  "CLIPSEARCH_THREADS"}
    api = (ROOT / "docs" / "api.md").read_text()
    assert {name for name in known if name not in api} == set(), "every setting is documented in docs/api.md"


def test_the_replicas_profile_spreads_searches_over_read_replicas_and_sends_writes_to_one_writer() -> None:
    services = load("docker-compose.yml")["services"]
    replica, proxy = services["api-replica"], services["proxy"]
    assert replica["profiles"] == proxy["profiles"] == ["replicas"]
    assert replica["deploy"]["replicas"] == "${CLIPSEARCH_REPLICAS:-3}" and replica["ports"] == []
    assert replica["environment"]["CLIPSEARCH_AUTO_COMPACT"] == "false"  # the writer compacts
    assert replica["volumes"] == services["api"]["volumes"] and replica["image"] == services["api"]["image"]

    def settings_of(service: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in service["environment"].items()
                if name not in ("CLIPSEARCH_AUTO_COMPACT", "CLIPSEARCH_PUBLIC_URL")}
    assert settings_of(replica) == settings_of(services["api"])  # one definition: the replicas serve as `api` does
    conf = proxy["environment"]["NGINX_CONF"]
    assert "location /items { set $$writer http://api:8000;" in conf
    assert "location / { set $$replicas http://api-replica:8000;" in conf
    assert "resolver 127.0.0.11" in conf and proxy["ports"] == ["${CLIPSEARCH_PROXY_PORT:-8080}:8080"]
    assert set(proxy["depends_on"]) == {"api", "api-replica"}
    assert replica["environment"]["CLIPSEARCH_PUBLIC_URL"] == "http://localhost:${CLIPSEARCH_PROXY_PORT:-8080}"


def test_the_plain_command_runs_the_cpu_image_and_reserves_no_device() -> None:
    assert not (ROOT / "docker-compose.override.yml").exists(), "compose would read it without being asked"
    for name, service in load("docker-compose.yml")["services"].items():
        if name == "proxy":
            continue
        assert service["image"] == "clipsearch:cpu" and service["build"]["args"] == {"VARIANT": "cpu"}, name
        assert "resources" not in service.get("deploy", {}), name
    assert load("docker-compose.yml")["services"]["api"]["environment"]["CLIPSEARCH_PUBLIC_URL"] == \
        "http://localhost:${CLIPSEARCH_PUBLISH_PORT:-8000}"


def test_the_gpu_file_gives_every_service_the_gpu_image_and_a_gpu() -> None:
    services = load("docker-compose.gpu.yml")["services"]
    assert set(services) == {"indexer", "api", "api-replica"}
    for service in services.values():
        assert service["image"] == "clipsearch:gpu" and service["build"]["args"] == {"VARIANT": "gpu"}
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_readmes_first_lines_show_the_plain_command_then_the_gpu_one() -> None:
    top = (ROOT / "README.md").read_text().split("```")[1]
    plain = top.index("docker compose up ")
    assert "-f docker-compose.yml -f docker-compose.gpu.yml up" in top[plain:]


def test_the_dockerfile_builds_gpu_and_cpu_images_without_build_tools_at_runtime() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    built = stages(dockerfile)
    assert {"base-gpu", "base-cpu", "builder", "runtime"} <= built.keys()
    assert "nvidia/cuda" in dockerfile and "cudnn-runtime" in dockerfile
    assert "EXTRAS=gpu " in built["base-gpu"] and "EXTRAS=cpu,onnx " in built["base-cpu"]
    assert "build-essential" in built["builder"] and "build-essential" not in built["runtime"]
    runtime = built["runtime"]
    assert re.search(r"^USER clipsearch$", runtime, flags=re.MULTILINE)
    assert "HF_HOME=/cache/huggingface" in runtime and 'VOLUME ["/cache"]' in runtime
    assert "HEALTHCHECK" in runtime and 'CMD ["python", "-m", "app.healthcheck"]' in runtime
    assert runtime.rstrip().endswith('CMD ["python", "-m", "app"]')


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"],
                                   ["docker-compose.yml", "docker-compose.gpu.yml", "--profile", "replicas"]])
def test_docker_compose_accepts_the_files(files: list[str]) -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    arguments = [argument for name in files
                 for argument in ((name,) if name.startswith("--") or name == "replicas" else ("-f", str(ROOT / name)))]
    checked = subprocess.run(["docker-compose", *arguments, "config", "-q"], capture_output=True, text=True,
                             cwd=ROOT)
    assert checked.returncode == 0, checked.stderr


def test_the_demo_corpus_has_captioned_images_and_texts(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image is not installed")
    from clipsearch.ingest.sources import read_image_source, read_text_source
    from indexer.demo import write_demo_corpus

    images, texts = write_demo_corpus(tmp_path)
    items = read_image_source(tmp_path / "images")
    assert len(items) == images >= 10 and all(item.text and item.extra["licence"] for item in items)
    assert len(read_text_source(tmp_path / "texts.txt")) == texts


def test_every_package_is_found_by_a_non_editable_install() -> None:
    from setuptools import find_packages

    found = set(find_packages(ROOT, include=["clipsearch*", "app*", "indexer*"]))
    assert {"clipsearch", "app", "app.routes", "indexer"} <= found


@pytest.mark.parametrize("statement", ["import clipsearch.client", "from clipsearch import ClipSearchClient",
                                       "import clipsearch.config"])
def test_the_client_and_the_config_records_import_without_torch_or_faiss(statement: str) -> None:
    code = f"import sys; {statement}; sys.exit(' '.join(sorted({{'torch', 'faiss'}} & set(sys.modules))) or 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_public_api_is_reexported() -> None:
    import clipsearch

    assert clipsearch.load_bundle.__module__ == "clipsearch.store.bundle.load"
    assert set(clipsearch.__all__) >= {"build", "load_encoder", "SearchService", "ClipSearchClient"}

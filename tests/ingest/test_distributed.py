"""`--engine ray`: the same bundle as the local engine, from a Ray instance with 2 CPUs on this machine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clipsearch.config import CaptionConfig, OcrConfig
from clipsearch.errors import BuildError, IndexSettingsInvalid
from clipsearch.ingest.build import BuildSummary, build
from clipsearch.ingest.distributed import ActorPool, plan_actor_pool
from clipsearch.ingest.shards import work_dir_for
from clipsearch.modality import Modality
from clipsearch.store.bundle import REPORT_FILE, load_bundle
from indexer.building import config_from_args
from indexer.cli import parse_args
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.imagefiles import good_and_bad_files
from tests.support.reference import stored_vectors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One Ray instance for the module, as small as the CI machine: 2 CPUs (and this machine's GPUs)."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    ray.init(num_cpus=2, num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good and bad files, duplicates among them, across four shards of 16 (batches of 8, 2 per shard),
    and texts with a repeated line."""
    root = tmp_path_factory.mktemp("ray-corpus")
    good_and_bad_files(root / "images" / "mixed")
    make_image_corpus(root / "images" / "noise", 40)
    lines = [f"a sentence about thing number {number}" for number in range(20)]
    (root / "texts.txt").write_text("\n".join([*lines, lines[3]]) + "\n")
    return root


@pytest.fixture(scope="module")
def local_build(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "bundle"
    build(tiny_config(out, images=corpus / "images", texts=corpus / "texts.txt"))
    return out


def ray_config(corpus: Path, out: Path, **overrides: Any) -> Any:
    return tiny_config(out, images=corpus / "images", texts=corpus / "texts.txt", engine="ray", **overrides)


def assert_same_bundle(found_path: Path, expected_path: Path, atol: float = 1e-6) -> None:
    """Same items (ids, uris, texts, metadata, hashes), same report, and vectors equal to `atol`."""
    found, expected = load_bundle(found_path), load_bundle(expected_path)
    try:
        assert [vars(item) for item in found.items] == [vars(item) for item in expected.items]
        assert json.loads((found_path / REPORT_FILE).read_text()) == \
            json.loads((expected_path / REPORT_FILE).read_text())
        for modality in (Modality.IMAGE, Modality.TEXT):
            found_ids, found_vectors = stored_vectors(found, modality)
            expected_ids, expected_vectors = stored_vectors(expected, modality)
            np.testing.assert_array_equal(found_ids, expected_ids)
            np.testing.assert_allclose(found_vectors, expected_vectors, rtol=0, atol=atol)
    finally:
        found.close()
        expected.close()


def test_a_ray_build_gives_the_local_builds_ids_vectors_and_report(local_ray: None, corpus: Path, local_build: Path,
                                                                    tmp_path: Path) -> None:
    summary = build(ray_config(corpus, tmp_path / "bundle"))
    assert_same_bundle(tmp_path / "bundle", local_build)
    report = json.loads((tmp_path / "bundle" / REPORT_FILE).read_text())
    assert report["skipped"] and report["duplicates"]  # the bad files and the copies were there to be found
    assert summary.resumed_shards == 0
    assert not work_dir_for(tmp_path / "bundle").exists()


KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from clipsearch.ingest.build import build
    from tests.support.corpora import tiny_config

    corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
    written = []

    def kill_after_two(path):
        written.append(path)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    build(tiny_config(out, images=corpus / "images", texts=corpus / "texts.txt", engine="ray"),
          on_shard_written=kill_after_two)
""")


def test_a_ray_build_killed_midway_resumes_without_embedding_its_shards_again(
        local_ray: None, corpus: Path, local_build: Path, tmp_path: Path) -> None:
    # The killed build starts a Ray instance of its own, which Ray's reaper stops when it dies.
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(corpus), str(tmp_path / "bundle")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Resumed with two actors sharing the CPUs: how many embed does not change the vectors.
    summary: BuildSummary = build(ray_config(corpus, tmp_path / "bundle", ray_actors=2))
    assert summary.resumed_shards == 2
    assert_same_bundle(tmp_path / "bundle", local_build)


@pytest.mark.gpu
def test_a_ray_build_on_gpu_actors_matches_the_local_gpu_build_within_fp16(local_ray: None, corpus: Path,
                                                                          tmp_path: Path) -> None:
    local = build(tiny_config(tmp_path / "local", images=corpus / "images", texts=corpus / "texts.txt", device="cuda"))
    on_ray = build(ray_config(corpus, tmp_path / "ray", device="auto"))  # auto: one actor per GPU
    assert on_ray.indexed == local.indexed
    assert_same_bundle(tmp_path / "ray", tmp_path / "local", atol=1e-2)


def test_without_the_ray_extra_the_build_names_it(corpus: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    with pytest.raises(BuildError, match=r"\[ray\] extra"):
        build(ray_config(corpus, tmp_path / "bundle"))


def test_captioning_is_refused_on_ray_before_anything_runs(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexSettingsInvalid, match="local engine"):
        build(ray_config(corpus, tmp_path / "bundle", caption=CaptionConfig()))
    assert not work_dir_for(tmp_path / "bundle").exists()


def test_an_unknown_engine_is_refused(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexSettingsInvalid, match="unknown engine 'spark'"):
        build(tiny_config(tmp_path / "bundle", images=corpus / "images", engine="spark"))


def test_the_cli_passes_the_engine_and_its_settings() -> None:
    config = config_from_args(parse_args(["build", "--images", "photos", "--out", "bundle", "--engine", "ray",
                                          "--ray-address", "ray://head:10001", "--ray-actors", "4"]))
    assert (config.engine, config.ray_address, config.ray_actors) == ("ray", "ray://head:10001", 4)


def test_a_cluster_with_gpus_gets_one_actor_per_gpu() -> None:
    assert plan_actor_pool({"CPU": 64, "GPU": 8}, "auto", None) == ActorPool(8, "cuda", 1.0, 1.0)
    assert plan_actor_pool({"CPU": 64, "GPU": 8}, "cuda", 2) == ActorPool(2, "cuda", 1.0, 1.0)


def test_cpu_actors_reserve_half_the_cpus_and_share_all_of_them_between_their_models() -> None:
    assert plan_actor_pool({"CPU": 2}, "auto", None) == ActorPool(1, "cpu", 0.0, 1.0, threads=2)
    assert plan_actor_pool({"CPU": 2}, "auto", 2) == ActorPool(2, "cpu", 0.0, 0.5, threads=1)
    assert plan_actor_pool({"CPU": 16, "GPU": 2}, "cpu", 4) == ActorPool(4, "cpu", 0.0, 1.0, threads=4)


def test_asking_for_a_gpu_on_a_cluster_without_one_is_refused() -> None:
    with pytest.raises(BuildError, match="no GPU"):
        plan_actor_pool({"CPU": 8}, "cuda", None)


def test_a_ray_build_reads_the_text_in_images_as_the_local_build_does(local_ray: None, signs_dir: Path,
                                                                     ocr_bundle_path: Path, tmp_path: Path) -> None:
    summary = build(tiny_config(tmp_path / "bundle", images=signs_dir / "images", ocr=OcrConfig(threads=2),
                                engine="ray"))
    assert summary.text_read == 12
    found, expected = load_bundle(tmp_path / "bundle"), load_bundle(ocr_bundle_path)
    try:
        for ray_item, local_item in zip(found.items, expected.items, strict=True):
            assert (ray_item.id, ray_item.uri, ray_item.extra["ocr_text"]) == \
                (local_item.id, local_item.uri, local_item.extra["ocr_text"])
            ray_lines, local_lines = ray_item.extra["ocr"]["lines"], local_item.extra["ocr"]["lines"]
            assert [line["box"] for line in ray_lines] == [line["box"] for line in local_lines]
            # ONNX Runtime's threads may sum in another order: confidences agree to rounding
            assert [line["score"] for line in ray_lines] == pytest.approx([line["score"] for line in local_lines],
                                                                          abs=1e-3)
    finally:
        found.close()
        expected.close()
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["ocr"] == \
        json.loads((ocr_bundle_path / "manifest.json").read_text())["ocr"]

from __future__ import annotations

import os
import shutil

# Hugging Face files load from the package's own directories (clipsearch/model/model_configs/hf), never
# from the network, not even to ask for a newer version. Set before anything imports huggingface_hub,
# which reads it once.
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from clipsearch.config import OFFLINE_MODEL, OcrConfig
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.store.bundle import Bundle, load_bundle
from indexer.signs import write_signs_corpus
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config
from tests.support.small_disk import MiB, SmallDisk, small_disk

# The suite's references are PyTorch's own outputs, so servers and indexer runs it starts use PyTorch
# (with the [onnx] extra installed, 'auto' would pick ONNX Runtime). tests/model/test_onnx_backend.py and
# the tests that name a backend cover ONNX Runtime.
os.environ["CLIPSEARCH_BACKEND"] = "torch"
# Servers the tests start caption with the tiny offline CoCa and answer with the tiny BLIP: tests never
# download weights.
os.environ.update(CLIPSEARCH_CAPTION_MODEL="tiny-coca", CLIPSEARCH_CAPTION_PRETRAINED="",
                  CLIPSEARCH_CAPTION_GENERATION="top_k", CLIPSEARCH_VQA_MODEL="tiny-blip-vqa")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_network = pytest.mark.skip(reason="downloads pretrained weights; set CLIPSEARCH_NETWORK_TESTS=1 to run")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "network" in item.keywords and os.environ.get("CLIPSEARCH_NETWORK_TESTS") != "1":
            item.add_marker(skip_network)


EXPLAINED_SKIPS = ("gpu", "network")
"""Marks whose tests may be skipped on any machine: it has no GPU, or no network. In CI (CI=true)
every other skip (a missing browser, tool or extra, which CI installs) fails the run, so that a
test never stops running unnoticed."""


def _strict() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and _strict() and not any(mark in item.keywords for mark in EXPLAINED_SKIPS):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A whole module skipped (pytest.importorskip, or pytest.skip at module level) fails in CI too."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and _strict():
        _fail_skip(report)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, where everything it needs is installed: {reason}"


@pytest.fixture(scope="session")
def encoder() -> ClipEncoder:
    return load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_image_corpus(root / "images", 30)
    make_text_corpus(root / "texts.txt", 25)
    return root


@pytest.fixture(scope="session")
def bundle_path(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    build(tiny_config(out, images=corpus_dir / "images", texts=corpus_dir / "texts.txt"))
    return out


@pytest.fixture(scope="session")
def fused_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images, every third captioned, built with --fuse image=0.7,caption=0.3."""
    root = tmp_path_factory.mktemp("fused")
    make_image_corpus(root / "images", 24)
    out = root / "bundle"
    build(tiny_config(out, images=root / "images", fuse=Fusion(0.7, 0.3)))
    return out


SIGNS = 12
"""Images of the rendered text corpus the OCR tests share: six English, six Chinese."""


@pytest.fixture(scope="session")
def signs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """indexer.signs' corpus: words on cluttered backgrounds, with truth.jsonl."""
    root = tmp_path_factory.mktemp("signs")
    write_signs_corpus(root, SIGNS, seed=0, language="both")
    return root


@pytest.fixture(scope="session")
def ocr_bundle_path(signs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signs built with --ocr (PP-OCR from the [ocr] extra, as shipped)."""
    out = tmp_path_factory.mktemp("ocr") / "bundle"
    build(tiny_config(out, images=signs_dir / "images", ocr=OcrConfig(threads=2)))
    return out


@pytest.fixture(scope="session")
def read_fused_bundle_path(signs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signs, every other one captioned, built with --ocr and --fuse image=0.5,caption=0.2,ocr=0.3."""
    root = tmp_path_factory.mktemp("read-fused")
    images = Path(shutil.copytree(signs_dir / "images", root / "images"))
    for number, picture in enumerate(sorted(images.glob("*.jpg"))):
        if number % 2 == 0:
            picture.with_suffix(".txt").write_text(f"photo number {number}")
    build(tiny_config(root / "bundle", images=images, ocr=OcrConfig(threads=2), fuse=Fusion(0.5, 0.2, 0.3)))
    return root / "bundle"


@pytest.fixture()
def bundle(bundle_path: Path) -> Iterator[Bundle]:
    opened = load_bundle(bundle_path)
    yield opened
    opened.close()


@pytest.fixture()
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 16 MiB tmpfs of this test's own, to fill, grow and remount (tests/support/small_disk.py)."""
    with small_disk(tmp_path / "disk", 16 * MiB) as mounted:
        yield mounted

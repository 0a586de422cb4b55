"""Text in images end to end: read at build, kept and read again by sync, and found by keyword."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from clipsearch.config import OcrConfig, QueryLimits
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.fingerprint import corpus_fingerprint
from clipsearch.ingest.sync import SyncSources, sync
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.quality.reading import read_truth
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import REPORT_FILE, Bundle, load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog
from clipsearch.store.ocr_text import ocr_problem
from indexer.cli import main
from tests.support.corpora import tiny_config
from tests.support.imagefiles import image_bytes, save, words_picture


def test_every_image_is_indexed_with_the_text_it_shows(ocr_bundle_path: Path, signs_dir: Path) -> None:
    bundle = load_bundle(ocr_bundle_path)
    try:
        read = {Path(item.uri).name: item.extra["ocr_text"] for item in bundle.items}
        for truth in read_truth(signs_dir):
            assert truth.key in read[truth.path.name].replace(" ", ""), (truth.lines, read[truth.path.name])
        assert bundle.manifest.ocr is not None
        assert bundle.manifest.ocr["engine"].startswith("rapidocr 1.4.")
        assert OcrConfig.from_record(bundle.manifest.ocr) == OcrConfig(threads=2)
        assert json.loads((ocr_bundle_path / REPORT_FILE).read_text())["text_unread"] == []
    finally:
        bundle.close()


def test_a_key_word_finds_its_sign_first_by_keyword_in_both_languages(ocr_bundle_path: Path, signs_dir: Path,
                                                                      encoder: ClipEncoder) -> None:
    bundle = load_bundle(ocr_bundle_path)
    service = SearchService(encoder, bundle, QueryLimits(max_k=20))
    try:
        for truth in read_truth(signs_dir):
            hits = service.search_text(truth.key, Modality.IMAGE, 1, ranking=Ranking(SearchMode.KEYWORD)).hits
            assert [Path(hit.item.uri).name for hit in hits] == [truth.path.name], truth.key
            assert [truth.key.lower() in match["words"] for match in hits[0].ocr_matches] == \
                [True] * len(hits[0].ocr_matches) != []
    finally:
        service.close()
        bundle.close()


def test_an_image_whose_text_is_not_read_in_time_is_still_indexed_and_reported(tmp_path: Path) -> None:
    images = tmp_path / "images"
    save(images / "menu.png", image_bytes(words_picture("Pumpkin soup")))
    summary = build(tiny_config(tmp_path / "bundle", images=images, ocr=OcrConfig(timeout_s=0.001)))
    assert summary.indexed == {"image": 1}
    assert summary.report["text_unread"] == [{"uri": str(images / "menu.png"),
                                              "reason": "text not read within 0.001 s"}]
    assert "text found in 0 images (1 could not be read)" in summary.describe()
    bundle = load_bundle(tmp_path / "bundle")
    try:
        [item] = list(bundle.items)
        assert ocr_problem(item.extra) == "text not read within 0.001 s" and "ocr_text" not in item.extra
    finally:
        bundle.close()


def test_reading_settings_are_part_of_what_decides_the_bundle(tmp_path: Path) -> None:
    plain = BuildConfig(out=tmp_path / "b")
    read, read_finer = (BuildConfig(out=tmp_path / "b", ocr=OcrConfig(detection_side=side)) for side in (736, 960))
    fingerprints = {corpus_fingerprint(config, {}) for config in (plain, read, read_finer)}
    assert len(fingerprints) == 3




def test_sync_reads_new_images_and_keeps_the_text_of_unchanged_and_moved_ones(tmp_path: Path,
                                                                               encoder: ClipEncoder) -> None:
    images = tmp_path / "images"
    save(images / "menu.png", image_bytes(words_picture("Pumpkin soup")))
    save(images / "sign.png", image_bytes(words_picture("Grand opening")))
    build(tiny_config(tmp_path / "bundle", images=images, ocr=OcrConfig()))
    save(images / "new.png", image_bytes(words_picture("Closing sale")))                 # added: read
    (images / "menu.json").write_text(json.dumps({"album": "food"}))                    # sidecar only
    os.replace(images / "sign.png", images / "moved.png")                               # moved
    bundle = load_bundle(tmp_path / "bundle")
    live = LiveLog(tmp_path / "bundle" / LIVE_FILE, bundle.items, encoder.embedding_dim)
    try:
        summary = sync(bundle, live, encoder, SyncSources(images=images), progress=False)
        assert (summary.added, summary.updated, summary.moved) == (1, 1, 1)
        items = {Path(item.uri).name: item for item in live.state().items.values()}
        assert items["new.png"].extra["ocr_text"] == "Closing sale"
        assert items["menu.png"].extra == {"album": "food", **_ocr_keys(bundle, "menu.png")}
        assert items["moved.png"].extra["ocr_text"] == "Grand opening"
        again = sync(bundle, live, encoder, SyncSources(images=images), progress=False)
        assert (again.added, again.updated, again.moved, again.unchanged) == (0, 0, 0, 3)
    finally:
        live.close()
        bundle.close()


def _ocr_keys(bundle: Bundle, name: str) -> dict[str, object]:
    [item] = [item for item in bundle.items if Path(item.uri).name == name]
    return {key: item.extra[key] for key in ("ocr_text", "ocr")}


def test_the_build_command_takes_the_reading_settings_and_refuses_bad_ones(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    save(images / "menu.png", image_bytes(words_picture("Pumpkin soup")))
    with pytest.raises(SystemExit):
        main(["build", "--images", str(images), "--out", str(tmp_path / "b"), "--model", "tiny", "--ocr",
              "--ocr-recognition-min-score", "1.5"])
    assert "--ocr-recognition-min-score: must be at least 0 and below 1, got 1.5" in capsys.readouterr().err
    assert main(["build", "--images", str(images), "--out", str(tmp_path / "b"), "--model", "tiny", "--ocr",
                 "--ocr-detection-side", "960", "--workers", "0", "--no-progress"]) == 0
    assert "text found in 1 images (0 could not be read)" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["ocr"]["settings"]["detection_side"] == 960
    shutil.rmtree(tmp_path / "b")

"""The two build fingerprints grow from one settings dict: each changes exactly when it should."""

from __future__ import annotations

from pathlib import Path

from clipsearch.config import ModelRef
from clipsearch.ingest.build import read_sources
from clipsearch.ingest.fingerprint import corpus_fingerprint, resume_fingerprint
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config


def fingerprints(tmp_path: Path, **overrides: object) -> tuple[str, dict[str, object]]:
    config = tiny_config(tmp_path / "bundle", images=tmp_path / "images", texts=tmp_path / "texts.txt", **overrides)
    sources = read_sources(config)
    return corpus_fingerprint(config, sources), resume_fingerprint(config, ModelRef("tiny"), "cpu", sources)


def test_what_decides_the_vectors_changes_both_and_speed_settings_change_neither(tmp_path: Path) -> None:
    make_image_corpus(tmp_path / "images", 4)
    make_text_corpus(tmp_path / "texts.txt", 3)
    corpus, resume = fingerprints(tmp_path)
    assert fingerprints(tmp_path, workers=3, progress=True) == (corpus, resume)
    changed_corpus, changed_resume = fingerprints(tmp_path, max_pixels=1000)
    assert changed_corpus != corpus and changed_resume != resume


def test_index_settings_change_only_the_bundle_and_batching_only_the_resume(tmp_path: Path) -> None:
    make_image_corpus(tmp_path / "images", 4)
    make_text_corpus(tmp_path / "texts.txt", 3)
    corpus, resume = fingerprints(tmp_path)
    # The shards do not depend on the index: a killed build may resume with another index factory.
    index_corpus, index_resume = fingerprints(tmp_path, index_factory="IVF2,Flat")
    assert index_corpus != corpus and index_resume == resume
    # Batches decide which items share a forward pass, not what the finished bundle holds.
    batch_corpus, batch_resume = fingerprints(tmp_path, batch_size=4)
    assert batch_corpus == corpus and batch_resume != resume


def test_a_corpus_file_rewritten_changes_both(tmp_path: Path) -> None:
    make_image_corpus(tmp_path / "images", 4)
    make_text_corpus(tmp_path / "texts.txt", 3)
    corpus, resume = fingerprints(tmp_path)
    (tmp_path / "texts.txt").write_text("other\ntexts\n")
    changed_corpus, changed_resume = fingerprints(tmp_path)
    assert changed_corpus != corpus and changed_resume != resume

"""manifest.json: read into a frozen value, every defect named, the model checked, changes atomic."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from clipsearch.config import ModelRef
from clipsearch.errors import BundleFileMissing, ManifestInvalid, ModelMismatch, UnsupportedFormatVersion
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.manifest import (
    MANIFEST_FILE,
    Manifest,
    check_model,
    compaction_lock,
    read_manifest,
    record_evaluation,
)


def rewrite_manifest(path: Path, change: dict[str, object]) -> None:
    data = json.loads((path / MANIFEST_FILE).read_text())
    data.update(change)
    (path / MANIFEST_FILE).write_text(json.dumps(data))


def test_a_manifest_round_trips_through_json(bundle: Bundle) -> None:
    assert Manifest.from_json(bundle.manifest.to_json()) == bundle.manifest


def test_a_missing_manifest_or_directory_means_no_bundle(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleFileMissing, match="no bundle directory"):
        read_manifest(tmp_path / "nowhere")
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleFileMissing, match=MANIFEST_FILE):
        read_manifest(copy)


def test_an_unsupported_format_version_is_refused_with_both_versions(copy: Path) -> None:
    rewrite_manifest(copy, {"format_version": 99})
    with pytest.raises(UnsupportedFormatVersion, match="99.*version 1"):
        read_manifest(copy)


def test_a_manifest_missing_a_field_names_it(copy: Path) -> None:
    data = json.loads((copy / MANIFEST_FILE).read_text())
    del data["embedding_dim"]
    (copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ManifestInvalid, match="embedding_dim"):
        read_manifest(copy)


def test_a_manifest_that_is_not_json_is_refused(copy: Path) -> None:
    (copy / MANIFEST_FILE).write_text("{")
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        read_manifest(copy)


def test_another_model_is_refused_naming_both(bundle: Bundle) -> None:
    with pytest.raises(ModelMismatch, match="ViT-B-32.*laion"):
        check_model(bundle.manifest, ModelRef("ViT-B-32", pretrained="laion2b_s34b_b79k"), 512)
    with pytest.raises(ModelMismatch, match="64-d"):
        check_model(bundle.manifest, ModelRef("tiny"), 64)
    check_model(bundle.manifest, ModelRef("tiny"), 32)


def test_recorded_evaluations_accumulate_and_leave_the_bundle_valid(copy: Path) -> None:
    record_evaluation(copy, {"pairs": "a", "recall@10": 0.5})
    record_evaluation(copy, {"pairs": "b", "recall@10": 0.75})
    loaded = load_bundle(copy)  # checksums still hold: the manifest is not among the files it lists
    assert [record["pairs"] for record in loaded.manifest.evaluations] == ["a", "b"]
    loaded.close()


def test_one_compaction_at_a_time_holds_the_lock(copy: Path) -> None:
    with compaction_lock(copy) as held:
        assert held
        others: list[bool] = []

        def try_it() -> None:  # flock locks belong to open files, so another open sees it held
            with compaction_lock(copy, wait=False) as other:
                others.append(other)

        thread = threading.Thread(target=try_it)
        thread.start()
        thread.join()
        assert others == [False]
    with compaction_lock(copy, wait=False) as again:
        assert again

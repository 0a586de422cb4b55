from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import ModelRef
from clipsearch.errors import (
    BundleError,
    BundleFileMissing,
    ChecksumMismatch,
)
from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle, load_bundle, rewrite_items, write_bundle
from clipsearch.store.items import ITEMS_FILE, Item
from clipsearch.store.manifest import MANIFEST_FILE, read_manifest
from tests.support.reference import stored_vectors


def rewrite_manifest(path: Path, change: dict[str, object]) -> None:
    data = json.loads((path / MANIFEST_FILE).read_text())
    data.update(change)
    (path / MANIFEST_FILE).write_text(json.dumps(data))


def test_a_bundle_round_trips_items_and_vectors(bundle: Bundle) -> None:
    manifest = bundle.manifest
    assert manifest.model == ModelRef("tiny")
    assert manifest.modalities[Modality.IMAGE].count == 30 and manifest.modalities[Modality.TEXT].count == 25
    items = list(bundle.items)
    assert len(items) == 55
    assert {item.modality for item in items} == {Modality.IMAGE, Modality.TEXT}
    first_text = next(item for item in items if item.modality is Modality.TEXT)
    assert first_text.id == 30 and first_text.text == "a sentence about thing number 0"
    captioned = next(item for item in items if item.uri.endswith("picture_000.png"))
    assert bundle.items.get(captioned.id) == captioned
    assert captioned.text == "caption of picture 0" and captioned.extra == {"number": 0}
    vector = bundle.indices[Modality.IMAGE].reconstruct(0)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_a_missing_file_is_named(copy: Path) -> None:
    (copy / ITEMS_FILE).unlink()
    with pytest.raises(BundleFileMissing, match=ITEMS_FILE):
        load_bundle(copy)


def test_an_altered_file_fails_its_checksum(copy: Path) -> None:
    index_file = copy / "image.faiss"
    data = bytearray(index_file.read_bytes())
    data[-1] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="image.faiss"):
        load_bundle(copy)


def test_a_truncated_file_fails_its_size_check(copy: Path) -> None:
    (copy / "text.faiss").write_bytes((copy / "text.faiss").read_bytes()[:100])
    with pytest.raises(ChecksumMismatch, match="text.faiss"):
        load_bundle(copy)


def test_a_dimension_that_disagrees_with_the_index_is_refused(copy: Path) -> None:
    rewrite_manifest(copy, {"embedding_dim": 64})
    with pytest.raises(BundleError, match="dimension 32"):
        load_bundle(copy)


def test_writing_replaces_an_old_bundle_but_never_a_foreign_folder(bundle: Bundle, copy: Path, tmp_path: Path) -> None:
    old = read_manifest(copy)
    content = {}  # an empty bundle is still a complete one
    write_bundle(copy, bundle.manifest.model, 32, content, [], {"skipped": []}, {})
    assert read_manifest(copy).created_at >= old.created_at and read_manifest(copy).modalities == {}
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".copy") and path.name != ".copy.lock"]
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(BundleError, match="not a bundle"):
        write_bundle(foreign, bundle.manifest.model, 32, content, [], {}, {})
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_debris_of_killed_builds_is_removed_but_live_builds_are_left_alone(bundle: Bundle, tmp_path: Path) -> None:
    import os

    dead = tmp_path / ".out.staging-999999999"
    live = tmp_path / f".out.staging-{os.getppid()}"
    retired = tmp_path / ".out.retired-999999998"
    for folder in (dead, live, retired):
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
    write_bundle(tmp_path / "out", bundle.manifest.model, 32, {}, [], {"skipped": []}, {})
    assert not dead.exists() and not retired.exists() and live.exists()


def test_rewriting_items_changes_only_their_metadata_and_keeps_the_bundle_valid(copy: Path) -> None:
    before = load_bundle(copy)
    old_items = list(before.items)
    old_vectors = {modality: stored_vectors(before, modality) for modality in before.indices}
    before.close()
    rewrite_items(copy, lambda item: replace(item, extra={**item.extra, "label": f"l{item.id}"}))
    after = load_bundle(copy)  # checksums verified: the manifest records the new items.sqlite
    try:
        assert [replace(item, extra={**item.extra, "label": f"l{item.id}"}) for item in old_items] == list(after.items)
        for modality, (ids, vectors) in old_vectors.items():
            new_ids, new_vectors = stored_vectors(after, modality)
            assert np.array_equal(ids, new_ids) and np.array_equal(vectors, new_vectors)
    finally:
        after.close()
    assert not [path for path in copy.parent.iterdir() if ".staging-" in path.name or ".retired-" in path.name]


def test_a_failed_rewrite_leaves_the_old_bundle_untouched(copy: Path) -> None:
    manifest_before = (copy / MANIFEST_FILE).read_text()

    def fail(item: Item) -> Item:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        rewrite_items(copy, fail)
    assert (copy / MANIFEST_FILE).read_text() == manifest_before
    load_bundle(copy).close()

"""Writing a bundle: a new one replaces an old bundle (never a foreign folder), and a relabelling
changes only the metadata, whole or not at all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import (
    BundleError,
)
from clipsearch.store.bundle import Bundle, load_bundle, rewrite_items, write_bundle
from clipsearch.store.items import Item
from clipsearch.store.manifest import MANIFEST_FILE, read_manifest
from tests.support.reference import stored_vectors


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

"""Loading a bundle: items and vectors as written; a missing, altered or truncated file, or a dimension
that disagrees with the index, refused by name."""

from __future__ import annotations

import json
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
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.items import ITEMS_FILE
from clipsearch.store.manifest import MANIFEST_FILE


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









"""The catalog: a data folder's collections are its bundle subfolders, the default first; a collection is
made empty for a model and dropped whole; one bundle without a data folder is the default and only one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipsearch.config import ModelRef
from clipsearch.errors import CollectionConflict, CollectionNotFound, InvalidQuery
from clipsearch.store.bundle import load_bundle
from clipsearch.store.catalog import DEFAULT_COLLECTION, Catalog, check_collection_name

TINY = ModelRef("tiny")


def test_a_data_folder_lists_its_bundles_the_default_first_and_nothing_else(bundle_path: Path, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "unused", tmp_path / "collections")
    assert catalog.names() == []  # no folder yet: no collections, not an error
    for name in ("zoo", DEFAULT_COLLECTION, "archive"):
        shutil.copytree(bundle_path, tmp_path / "collections" / name)
    (tmp_path / "collections" / "notes").mkdir()  # no manifest: not a collection
    shutil.copytree(bundle_path, tmp_path / "collections" / ".zoo.staging-1")  # a build's staging folder
    (tmp_path / "collections" / "readme.txt").write_text("hello")
    assert catalog.names() == [DEFAULT_COLLECTION, "archive", "zoo"]
    assert catalog.path("zoo") == tmp_path / "collections" / "zoo"


def test_a_made_collection_is_an_empty_bundle_of_its_model_and_a_second_is_refused(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "unused", tmp_path)
    path = catalog.create("holidays", TINY, 32)
    bundle = load_bundle(path)
    try:
        assert bundle.manifest.model == TINY and bundle.manifest.embedding_dim == 32
        assert bundle.indices == {} and list(bundle.items) == []
    finally:
        bundle.close()
    assert catalog.names() == ["holidays"]
    with pytest.raises(CollectionConflict, match="exists already"):
        catalog.create("holidays", ModelRef("tiny-multilingual"), 32)
    assert Catalog(tmp_path / "unused", tmp_path).names() == ["holidays"]


def test_dropping_removes_the_whole_collection_but_never_the_default(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "unused", tmp_path)
    catalog.create(DEFAULT_COLLECTION, TINY, 32)
    catalog.create("holidays", TINY, 32)
    (tmp_path / "holidays" / "live-images").mkdir()
    (tmp_path / "holidays" / "live-images" / "7.png").write_bytes(b"an upload")
    catalog.drop("holidays")
    assert catalog.names() == [DEFAULT_COLLECTION]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".default.lock", DEFAULT_COLLECTION]
    with pytest.raises(CollectionNotFound):
        catalog.drop("holidays")
    with pytest.raises(CollectionConflict, match="cannot be dropped"):
        catalog.drop(DEFAULT_COLLECTION)
    assert catalog.names() == [DEFAULT_COLLECTION]


def test_one_bundle_without_a_data_folder_is_the_default_and_the_only_collection(bundle_path: Path) -> None:
    catalog = Catalog(bundle_path)
    assert catalog.fixed and catalog.names() == [DEFAULT_COLLECTION] and catalog.path("default") == bundle_path
    with pytest.raises(CollectionNotFound, match="set CLIPSEARCH_DATA_DIR") as missing:
        catalog.path("holidays")
    assert missing.value.field == "collection"
    for change in (lambda: catalog.create("holidays", TINY, 32), lambda: catalog.drop("default")):
        with pytest.raises(CollectionConflict, match="CLIPSEARCH_DATA_DIR"):
            change()


@pytest.mark.parametrize("name", ["", ".hidden", "-dash", "_under", "a/b", "..", "x" * 65, "tab\there", "é"])
def test_a_name_that_cannot_be_a_folder_of_its_own_is_refused_naming_the_field(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidQuery) as refused:
        check_collection_name(name)
    assert refused.value.field == "collection"
    with pytest.raises(InvalidQuery):
        Catalog(tmp_path, tmp_path).path(name)
    assert check_collection_name("Holidays_2026.v2-final") == "Holidays_2026.v2-final"

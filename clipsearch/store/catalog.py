"""Which collections a server holds, and where: a folder of bundles, one per collection, named after it.

A data folder (CLIPSEARCH_DATA_DIR) holds each collection as a bundle in a subfolder of that name;
the one named `default` is what the routes without /collections/NAME serve. Without a data folder,
the one bundle at CLIPSEARCH_BUNDLE_PATH is the `default` collection, and no other can be made.

Creating a collection writes an empty bundle (no items, the model it is for), which the live log,
`indexer build --collection` or `indexer sync` then fills. Dropping one takes the bundle's lock (no
write is half-done), renames the folder aside in one step, then deletes it: a server polling the
folder sees the collection whole or gone, never half-deleted.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from clipsearch.config import ModelRef
from clipsearch.errors import CollectionConflict, CollectionNotFound, InvalidQuery
from clipsearch.store.bundle import write_bundle
from clipsearch.store.manifest import MANIFEST_FILE, bundle_lock
from clipsearch.util.files import fsync_directory

DEFAULT_COLLECTION = "default"
"""The collection today's routes (those without /collections/NAME) serve."""
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A collection's name is a folder's name too: no leading dot (those are staging and lock files), no slash."""


def check_collection_name(name: str, field: str = "collection") -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidQuery(field, f"{name!r} is not a collection name: 1 to 64 letters, digits, '_', '.' or '-', "
                                  "not starting with '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class Catalog:
    """The collections under `data_dir`, or the single bundle at `bundle_path` when there is none."""

    bundle_path: Path
    data_dir: Path | None = None

    @property
    def fixed(self) -> bool:
        """One bundle, named by the settings: collections can be neither made nor dropped."""
        return self.data_dir is None

    def names(self) -> list[str]:
        """The collections there now (a folder with a manifest), the default first, then by name."""
        if self.data_dir is None:
            return [DEFAULT_COLLECTION]
        try:
            found = sorted(entry.name for entry in os.scandir(self.data_dir)
                           if COLLECTION_NAME.match(entry.name) and (Path(entry.path) / MANIFEST_FILE).is_file())
        except FileNotFoundError:
            return []
        return sorted(found, key=lambda name: name != DEFAULT_COLLECTION)

    def path(self, name: str) -> Path:
        """Where collection `name` is (or would be) kept; a name that is not one is refused."""
        if self.data_dir is None:
            if name != DEFAULT_COLLECTION:
                raise CollectionNotFound(f"no collection named {name!r} (this server serves one bundle, "
                                         f"'{DEFAULT_COLLECTION}': set CLIPSEARCH_DATA_DIR to hold several)",
                                         "collection")
            return self.bundle_path
        return self.data_dir / check_collection_name(name)

    def create(self, name: str, model: ModelRef, embedding_dim: int) -> Path:
        """Write an empty collection `name` for `model`; CollectionConflict if one is there already."""
        path = self.changeable_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with bundle_lock(path):
            if path.exists():
                raise CollectionConflict(f"a collection named {name!r} exists already", "collection")
        # write_bundle stages the bundle beside `path` and puts it in place whole; two creations at
        # once both write an empty bundle of their model, and the last one stays: checked above
        # is the common case of a name taken long ago.
        write_bundle(path, model, embedding_dim, {}, [], {"skipped": []}, {})
        return path

    def drop(self, name: str, lock_timeout_s: float | None = None) -> None:
        """Delete collection `name`, its live changes and uploads with it."""
        path = self.changeable_path(name)
        if name == DEFAULT_COLLECTION:
            raise CollectionConflict(f"the '{DEFAULT_COLLECTION}' collection is served by the routes without "
                                     "/collections/NAME and cannot be dropped; rebuild it instead", "collection")
        if not (path / MANIFEST_FILE).is_file():
            raise CollectionNotFound(f"no collection named {name!r}", "collection")
        dropped = path.with_name(f".{name}.retired-{os.getpid()}")
        with bundle_lock(path, lock_timeout_s):
            os.replace(path, dropped)
            fsync_directory(path.parent)
        shutil.rmtree(dropped, ignore_errors=True)
        (path.parent / f".{name}.lock").unlink(missing_ok=True)

    def changeable_path(self, name: str) -> Path:
        """Where collection `name` is or would be, if collections can be made and dropped here at all."""
        if self.data_dir is None:
            raise CollectionConflict("this server serves one bundle (CLIPSEARCH_BUNDLE_PATH); set "
                                     "CLIPSEARCH_DATA_DIR to a folder to make and drop collections in it",
                                     "collection")
        return self.path(name)

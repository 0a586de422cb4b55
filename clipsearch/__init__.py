"""clipsearch: the shared core of the indexer and the server. It never imports FastAPI.

The public API (build a bundle, load one, search it) is re-exported here lazily, so that
`from clipsearch.client import ClipSearchClient` does not pull in torch and FAISS.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildConfig": "clipsearch.ingest.config",
    "BuildSummary": "clipsearch.ingest.build",
    "build": "clipsearch.ingest.build",
    "Bundle": "clipsearch.store.bundle",
    "load_bundle": "clipsearch.store.bundle",
    "Item": "clipsearch.store.items",
    "Manifest": "clipsearch.store.manifest",
    "ClipEncoder": "clipsearch.model.encoder",
    "load_encoder": "clipsearch.model.factory",
    "ModelRef": "clipsearch.config",
    "QueryLimits": "clipsearch.config",
    "ClipSearchError": "clipsearch.errors",
    "Modality": "clipsearch.modality",
    "Hit": "clipsearch.store.collection",
    "SearchService": "clipsearch.search.service",
    "ClipSearchClient": "clipsearch.client",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""clipsearch: the shared core of the indexer and the server. It never imports FastAPI.

The public API (build a bundle, load one, search it) is re-exported here lazily, so that
`from clipsearch.client import ClipSearchClient` does not pull in torch and FAISS.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildConfig": "clipsearch.build", "BuildSummary": "clipsearch.build", "build": "clipsearch.build",
    "Bundle": "clipsearch.bundle", "Item": "clipsearch.item_store", "Manifest": "clipsearch.manifest",
    "load_bundle": "clipsearch.bundle", "ClipEncoder": "clipsearch.encoder", "ModelRef": "clipsearch.manifest",
    "load_encoder": "clipsearch.encoder", "ClipSearchError": "clipsearch.errors", "Modality": "clipsearch.modality",
    "Hit": "clipsearch.search", "QueryLimits": "clipsearch.query", "SearchService": "clipsearch.search",
    "ClipSearchClient": "clipsearch.client",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""The one brute-force reference every fast path is checked against, and its tie-tolerant comparison."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np

from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle
from clipsearch.store.items import Item


def unit_vectors(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """`count` random unit rows, float32 (count, dim)."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> TopK:
    """Exact top-k by inner product, scored in float64: every query against every vector, sorted."""
    scores = np.atleast_2d(queries).astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return TopK(np.take_along_axis(scores, order, axis=1).astype(np.float32), np.asarray(ids)[order])


def stored_vectors(bundle: Bundle, modality: Modality) -> tuple[np.ndarray, np.ndarray]:
    """The ids (int64 (n,)) and vectors (float32 (n, d)) a bundle holds for one modality."""
    ids = np.array([item.id for item in bundle.items if item.modality is modality], dtype=np.int64)
    return ids, bundle.base_vectors(modality, ids)


def brute_force_bundle(bundle: Bundle, target: Modality, query: np.ndarray, k: int) -> TopK:
    ids, vectors = stored_vectors(bundle, target)
    return brute_force(vectors, ids, query, k)


def assert_same_top_k(expected: TopK, found: TopK, atol: float = 1e-5) -> None:
    """Scores equal within `atol`; ids equal, except that items whose scores tie (within `atol`) may
    come in any order, and a tie across the k-th place may be cut differently (after FAISS's
    contrib.evaluation.check_ref_knn_with_draws)."""
    assert found.ids.shape == expected.ids.shape, (found.ids.shape, expected.ids.shape)
    np.testing.assert_allclose(found.scores, expected.scores, atol=atol)
    for row, (scores, expected_ids, found_ids) in enumerate(zip(expected.scores, expected.ids, found.ids,
                                                                strict=True)):
        start = 0
        while start < len(scores):
            end = start + 1
            while end < len(scores) and abs(scores[end] - scores[end - 1]) <= atol:
                end += 1
            if end < len(scores):  # a tie group cut by k can hold other equally good ids
                assert set(found_ids[start:end]) == set(expected_ids[start:end]), \
                    f"row {row}, places {start}–{end - 1}: {found_ids[start:end]} != {expected_ids[start:end]}"
            start = end


FusedModel = dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]
"""A test's own model of a fused collection: id → (image vector, {text part: its vector}), the parts
an image lacks left out."""


def fused_scores_by_hand(model: FusedModel, query: np.ndarray, weights: dict[str, float]) -> dict[int, float]:
    """Every image's fused score, one part at a time: Σ w_part · cos(q, part), the image's own vector
    in place of a text it lacks (clipsearch.index.fusion). `weights` sum to 1."""
    return {item_id: sum(weight * float(query @ (image if part == "image" else texts.get(part, image)))
                         for part, weight in weights.items())
            for item_id, (image, texts) in model.items()}


def assert_ranked_as(hits: list[Any], expected: dict[int, float], k: int) -> None:
    """The hits are the k best of `expected`, scored as it says (items within 1e-5 of each other may
    come in either order: a model's vectors are embedded apart from the bundle's)."""
    best = sorted(expected, key=lambda item_id: (-expected[item_id], item_id))[:k]
    assert_same_top_k(TopK(np.array([[expected[item_id] for item_id in best]], np.float32), np.array([best])),
                      TopK(np.array([[hit.score for hit in hits]], np.float32),
                           np.array([[hit.item.id for hit in hits]])))


def bundle_contents(bundle: Bundle) -> dict[str, object]:
    """Everything a bundle serves (items, vectors, index descriptions, model), for comparing two builds."""
    vectors = {modality.value: {item_id: bundle.indices[modality].reconstruct(item_id).tolist()
                                for item_id in (item.id for item in bundle.items if item.modality is modality)}
               for modality in bundle.indices}
    return {"items": [vars(item) for item in bundle.items], "vectors": vectors,
            "modalities": bundle.manifest.modalities, "model": bundle.manifest.model}


def filter_matches(raw: dict[str, Any], item: Item) -> bool:
    """Whether `item` passes the filter `raw` (clipsearch.store.filters' JSON), decided in plain Python."""
    if "key" not in raw:
        must = all(filter_matches(member, item) for member in raw.get("must", []))
        should = "should" not in raw or any(filter_matches(member, item) for member in raw["should"])
        must_not = not any(filter_matches(member, item) for member in raw.get("must_not", []))
        return must and should and must_not
    present, values = _filter_values(raw["key"], item)
    if "exists" in raw:
        return present == raw["exists"]
    if "range" in raw:
        return any(all(_compare(value, bound, name) for name, bound in raw["range"].items())
                   for value in values if _same_kind(value, next(iter(raw["range"].values()))))
    match = raw["match"]
    if "prefix" in match:
        return any(isinstance(value, str) and value.startswith(match["prefix"]) for value in values)
    if "text" in match:
        words = re.findall(r"\w+", match["text"].lower())
        return any(isinstance(value, str) and all(holds_by_scanning(value, word) for word in words) for value in values)
    wanted = [match["value"]] if "value" in match else match["any"]
    return any(_same_kind(value, candidate) and value == candidate for value in values for candidate in wanted)


def holds_by_scanning(text: str, word: str) -> bool:
    """Whether `text` holds `word` (lowercase), found by trying every position: where no letter
    touches a letter and no digit a digit at either end, or anywhere for a word of a script written
    without spaces (clipsearch.store.scripts.holds, worked out the long way)."""
    lowered = text.lower()
    unspaced = any(ord(character) > 0x7F and unicodedata.name(character, "").startswith(
        ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")) for character in word)
    for start in range(len(lowered) - len(word) + 1):
        if lowered[start:start + len(word)] != word:
            continue
        before = lowered[start - 1] if start > 0 else ""
        after = lowered[start + len(word)] if start + len(word) < len(lowered) else ""
        if unspaced or (not _alike(before, word[0]) and not _alike(after, word[-1])):
            return True
    return False


def _alike(neighbour: str, end: str) -> bool:
    """Whether a neighbouring character runs on from a word's end character: digit by digit, letter by letter."""
    if not neighbour:
        return False
    return neighbour.isdigit() if end.isdigit() else neighbour.isalpha()


def _filter_values(key: str, item: Item) -> tuple[bool, list[Any]]:
    """Whether `key` has a value on `item` (for `exists`), and the scalars a match compares."""
    columns = {"id": item.id, "modality": item.modality.value, "uri": item.uri,
               "caption": item.text if item.modality is Modality.IMAGE else None,
               "text": item.text if item.modality is Modality.TEXT else None}
    if key in columns:
        return columns[key] is not None, [] if columns[key] is None else [columns[key]]
    value: Any = item.extra
    for segment in key.removeprefix("metadata.").split("."):
        if not isinstance(value, dict) or segment not in value:
            return False, []
        value = value[segment]
    present = value is not None and value != []
    if isinstance(value, dict):
        return present, []
    return present, [element for element in (value if isinstance(value, list) else [value])
                     if element is not None and not isinstance(element, dict | list)]


def _kind(value: Any) -> str:
    return "boolean" if isinstance(value, bool) else "string" if isinstance(value, str) else "number"


def _same_kind(value: Any, other: Any) -> bool:
    return _kind(value) == _kind(other)


def _compare(value: Any, bound: Any, name: str) -> bool:
    return {"gt": value > bound, "gte": value >= bound, "lt": value < bound, "lte": value <= bound}[name]

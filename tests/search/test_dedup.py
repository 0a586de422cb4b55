"""Collapsing near-duplicates into the best-ranked of each group."""

from __future__ import annotations

import numpy as np

from clipsearch.search.dedup import collapse
from tests.support.reference import unit_vectors


def test_collapse_keeps_the_best_ranked_of_each_group() -> None:
    base = unit_vectors(3, dim=16, seed=1)
    vectors = np.stack([base[0], base[1], base[0], base[2], base[1], base[0]])
    assert collapse(vectors, 0.94) == [[0, 2, 5], [1, 4], [3]]
    assert collapse(vectors, 1.01) == [[0], [1], [2], [3], [4], [5]]

"""Fusion: the weights of image and caption, and the fused rows that score both in one inner product."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery
from clipsearch.index.fusion import Fusion, fused_rows
from tests.support.reference import unit_vectors

DEFAULT = Fusion(0.7, 0.3)


def test_weights_are_normalised_and_bad_ones_named() -> None:
    assert Fusion.parse("image=2,caption=1") == Fusion(2 / 3, 1 / 3)
    assert Fusion.of({"caption": 1}) == Fusion(0.0, 1.0)
    for weights, field in [({"image": -1, "caption": 1}, "fusion.image"), ({"image": 0}, "fusion"),
                           ({"text": 1}, "fusion.text"), ({"image": True}, "fusion.image")]:
        with pytest.raises(InvalidQuery) as raised:
            Fusion.of(weights)
        assert raised.value.field == field


def test_a_fused_row_times_an_expanded_query_is_the_fused_score() -> None:
    images, captions, query = unit_vectors(4, seed=1), unit_vectors(4, seed=2), unit_vectors(1, seed=3)[0]
    captioned = np.array([True, False, True, False])
    scores = fused_rows(images, captions, captioned) @ DEFAULT.expand(query[None])[0]
    expected = [0.7 * images[row] @ query + 0.3 * captions[row] @ query if captioned[row] else images[row] @ query
                for row in range(4)]
    assert scores == pytest.approx(expected, abs=1e-6)

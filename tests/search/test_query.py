"""Composed-query maths and limits, with no model: what a weighted sum gives, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.config import QueryLimits
from clipsearch.errors import InvalidQuery
from clipsearch.modality import Modality
from clipsearch.search.query import Encoding, ImageTerm, ItemTerm, QueryVector, TextTerm, check_terms, weighted_sum
from tests.support.reference import unit_vectors


def test_the_weighted_sum_is_the_renormalised_sum_of_weight_times_vector() -> None:
    first, second = unit_vectors(2, dim=16)
    combined = weighted_sum([(2.0, QueryVector(first, ("a",))), (-0.5, QueryVector(second, (), (
        Encoding(Modality.TEXT, 0.01),)))], "terms")
    expected = 2.0 * first.astype(np.float64) - 0.5 * second
    np.testing.assert_allclose(combined.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert combined.vector.dtype == np.float32
    assert combined.truncated == ("a",) and combined.encodings == (Encoding(Modality.TEXT, 0.01),)


def test_terms_that_cancel_out_are_refused() -> None:
    [vector] = unit_vectors(1, dim=8)
    with pytest.raises(InvalidQuery, match="cancel each other out"):
        weighted_sum([(1.0, QueryVector(vector)), (-1.0, QueryVector(vector))], "terms")


def test_weights_too_large_to_combine_are_refused() -> None:
    [vector] = unit_vectors(1, dim=8)
    with pytest.raises(InvalidQuery, match="too large"):
        weighted_sum([(1e308, QueryVector(vector)), (1e308, QueryVector(vector))], "terms")


@pytest.mark.parametrize(("terms", "field", "reason"), [
    ([], "terms", "at least one"),
    ([TextTerm("a")] * 3, "terms", "at most 2 terms"),
    ([ItemTerm(1, float("nan"))], "terms[0].weight", "finite"),
    ([ItemTerm(1, 0.0), ImageTerm(b"x", 0.0)], "terms", "all weights are zero"),
    ([ItemTerm(1), TextTerm("   ")], "terms[1].text", "empty"),
    ([TextTerm("a\x00b")], "terms[0].text", "NUL"),
])
def test_bad_terms_are_refused_before_any_is_embedded_naming_the_field(
        terms: list[TextTerm | ImageTerm | ItemTerm], field: str, reason: str) -> None:
    with pytest.raises(InvalidQuery, match=reason) as refused:
        check_terms(terms, "terms", QueryLimits(max_terms=2))
    assert refused.value.field == field


def test_a_zero_weight_term_is_not_checked_at_all() -> None:
    # An empty text would be refused (terms[1].text) if it were checked; with weight 0 it is ignored.
    with pytest.raises(InvalidQuery) as refused:
        check_terms([TextTerm("a"), TextTerm("", 1.0)], "terms", QueryLimits())
    assert refused.value.field.startswith("terms[1]")
    assert check_terms([TextTerm("a"), TextTerm("", 0.0)], "terms", QueryLimits()) is None

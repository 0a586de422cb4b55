"""Fusion: the weights of an image and its texts, and the fused rows that score them all in one inner product."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import InvalidQuery
from clipsearch.index.fusion import Fusion, TextVectors, fused_rows, fused_rows_by_id
from tests.support.reference import unit_vectors

DEFAULT = Fusion(0.7, 0.3)


def test_weights_are_normalised_and_bad_ones_named() -> None:
    assert Fusion.parse("image=2,caption=1") == Fusion(2 / 3, 1 / 3)
    assert Fusion.of({"caption": 1}) == Fusion(0.0, 1.0)
    for weights, field in [({"image": -1, "caption": 1}, "fusion.image"), ({"image": 0}, "fusion"),
                           ({"text": 1}, "fusion.text"), ({"image": True}, "fusion.image"),
                           ({"ocr": float("nan")}, "fusion.ocr")]:
        with pytest.raises(InvalidQuery) as raised:
            Fusion.of(weights)
        assert raised.value.field == field


def test_a_fused_row_times_an_expanded_query_is_the_fused_score() -> None:
    images, captions, query = unit_vectors(4, seed=1), unit_vectors(4, seed=2), unit_vectors(1, seed=3)[0]
    captioned = np.array([True, False, True, False])
    scores = fused_rows(["caption"], images, {"caption": TextVectors(captions, captioned)}) @ \
        DEFAULT.expand(query[None])[0]
    expected = [0.7 * images[row] @ query + 0.3 * captions[row] @ query if captioned[row] else images[row] @ query
                for row in range(4)]
    assert scores == pytest.approx(expected, abs=1e-6)


def test_the_parts_named_are_the_layout_and_the_image_always_leads_it() -> None:
    assert Fusion.parse("image=3,caption=1,ocr=1") == Fusion(0.6, 0.2, 0.2)
    assert Fusion.of({"image": 1, "ocr": 1}) == Fusion(0.5, None, 0.5)
    assert Fusion(0.5, None, 0.5).text_parts == ("ocr",) and Fusion(0.5, 0.5).text_parts == ("caption",)
    assert Fusion(0.6, 0.2, 0.2).as_dict() == {"image": 0.6, "caption": 0.2, "ocr": 0.2}
    assert Fusion.of(Fusion(0.5, None, 0.5).as_dict()) == Fusion(0.5, None, 0.5)


def test_a_querys_weights_take_the_bundles_layout_and_may_not_weigh_a_part_it_lacks() -> None:
    stored = Fusion(0.6, 0.2, 0.2)
    assert Fusion.of({"image": 1}).laid_out_as(stored) == Fusion(1.0, 0.0, 0.0)
    assert Fusion.of({"ocr": 1}).laid_out_as(stored) == Fusion(0.0, 0.0, 1.0)
    assert Fusion.of({"image": 1, "ocr": 0}).laid_out_as(Fusion(0.7, 0.3)) == Fusion(1.0, 0.0)
    with pytest.raises(InvalidQuery) as raised:
        Fusion.of({"image": 1, "ocr": 1}).laid_out_as(Fusion(0.7, 0.3))
    assert raised.value.field == "fusion.ocr" and "stores no ocr vectors" in raised.value.reason


def test_three_part_rows_score_each_text_or_the_image_in_its_place() -> None:
    images, captions, read = unit_vectors(6, seed=4), unit_vectors(6, seed=5), unit_vectors(6, seed=6)
    query = unit_vectors(1, seed=7)[0]
    has_caption = np.array([True, False, True, False, True, False])
    has_text = np.array([True, True, False, False, False, True])
    fusion = Fusion(0.5, 0.2, 0.3)
    rows = fused_rows(fusion.text_parts, images, {"caption": TextVectors(captions, has_caption),
                                                  "ocr": TextVectors(read, has_text)})
    assert rows.shape == (6, 3 * 32)
    for row in range(6):
        texts = {**({"caption": captions[row]} if has_caption[row] else {}),
                 **({"ocr": read[row]} if has_text[row] else {})}
        by_hand = sum(weight * float(query @ texts.get(part, images[row])) for part, weight in fusion.as_dict().items())
        assert float(rows[row] @ fusion.expand(query[None])[0]) == pytest.approx(by_hand, abs=1e-6)
        parts = fusion.parts(query, images[row], texts)
        assert sum(parts.values()) == pytest.approx(by_hand, abs=1e-6) and set(parts) == {"image", *texts}


def test_rows_by_id_place_each_held_vector_at_its_items_row() -> None:
    images, read = unit_vectors(4, seed=8), unit_vectors(2, seed=9)
    ids = np.array([7, 3, 9, 5])
    rows = fused_rows_by_id(["ocr"], ids, images, {"ocr": (np.array([5, 9]), read)})
    assert rows[:, 32:] == pytest.approx(np.stack([images[0], images[1], read[1], read[0]]))


def test_rows_sharing_their_texts_score_as_their_fused_rows_and_sum_their_parts() -> None:
    segments, (caption, query) = unit_vectors(3, 8, seed=5), unit_vectors(2, 8, seed=6)
    fusion = Fusion(0.5, 0.3, 0.2)
    for texts in ({"caption": caption}, {}):  # a video with its caption, and one without
        shared = {part: TextVectors(np.tile(vector, (3, 1)), np.ones(3, bool)) for part, vector in texts.items()}
        expected = fused_rows(fusion.text_parts, segments, shared) @ fusion.expand(query[None])[0]
        assert fusion.scores(query, segments, texts) == pytest.approx(expected, abs=1e-6)
        assert [sum(fusion.parts(query, row, texts).values()) for row in segments] == pytest.approx(expected, abs=1e-6)

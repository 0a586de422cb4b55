"""The modalities: which are held as segments with time spans, which live in a model's space of their
own, and which other modality an index measures its recall with."""

from __future__ import annotations

from clipsearch.modality import Modality, recall_queries_for


def test_videos_and_sounds_are_held_as_segments_with_time_spans_and_only_sounds_have_a_space_of_their_own() -> None:
    assert [modality for modality in Modality if modality.timed] == [Modality.VIDEO, Modality.AUDIO]
    assert [modality for modality in Modality if modality.own_space] == [Modality.AUDIO]


def test_an_index_measures_its_recall_with_texts_first_then_images_then_videos() -> None:
    assert recall_queries_for(Modality.IMAGE, list(Modality)) is Modality.TEXT
    assert recall_queries_for(Modality.TEXT, list(Modality)) is Modality.IMAGE
    assert recall_queries_for(Modality.VIDEO, [Modality.IMAGE, Modality.VIDEO]) is Modality.IMAGE
    assert recall_queries_for(Modality.IMAGE, [Modality.IMAGE]) is None


def test_sounds_are_never_queries_for_another_index_nor_queried_by_one() -> None:
    assert recall_queries_for(Modality.AUDIO, list(Modality)) is None
    assert recall_queries_for(Modality.IMAGE, [Modality.IMAGE, Modality.AUDIO]) is None

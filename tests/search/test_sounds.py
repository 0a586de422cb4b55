"""Queries of sounds: a text through the audio model's own text tower, a clip as the mean of its
windows' vectors; a search of sounds ranks each one by its best window, as brute force over the
stored windows does; bad clips and texts are refused naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling, Batching, QueryLimits
from clipsearch.errors import AudioDecodeError, AudioTooLarge, InvalidQuery
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.audio import AudioEncoder, load_audio_encoder
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.search.sounds import SoundQueries
from clipsearch.store import segments
from clipsearch.store.bundle import load_bundle
from clipsearch.util.audio import read_audio, window_spans
from tests.support.corpora import tiny_config
from tests.support.sounds import NOISE, TONES, sound_corpus, write_sound

pytest.importorskip("av")
pytest.importorskip("transformers")

LIMITS = QueryLimits(max_k=20, max_audio_seconds=20.0)


@pytest.fixture(scope="module")
def audio() -> AudioEncoder:
    return load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")


@pytest.fixture()
def queries(audio: AudioEncoder) -> Iterator[SoundQueries]:
    opened = SoundQueries(audio, 5.0, LIMITS, Batching())
    yield opened
    opened.close()


def test_a_text_is_embedded_by_the_audio_models_text_tower(queries: SoundQueries, audio: AudioEncoder) -> None:
    query = queries.text("a dog barking")
    np.testing.assert_allclose(query.vector, audio.encode_texts(["a dog barking"])[0], atol=1e-5)
    assert [encoding.tower for encoding in query.encodings] == [Modality.TEXT] and not query.truncated
    assert queries.text(" ".join(["rain"] * 200), "text").truncated == ("text",)


def test_a_clip_stands_for_the_mean_of_its_windows_vectors(queries: SoundQueries, audio: AudioEncoder,
                                                           tmp_path: Path) -> None:
    data = write_sound(tmp_path / "clip.flac", [(TONES[1], 7.0), (NOISE, 7.0)], kind="flac").read_bytes()
    clip = read_audio(data, audio.sampling_rate)
    windows = [clip.excerpt(start, end) for start, end in window_spans(clip.duration_s, audio.window_s, 5.0)]
    assert len(windows) == 2
    mean = audio.encode_audio(windows).mean(axis=0)
    query = queries.clip(data)
    np.testing.assert_allclose(query.vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert [encoding.tower for encoding in query.encodings] == [Modality.AUDIO]


def test_concurrent_windows_share_passes_of_the_audio_tower(audio: AudioEncoder) -> None:
    batched = SoundQueries(audio, 5.0, LIMITS, Batching(max_batch=4, window_s=60))
    try:
        vectors = batched.windows([np.full(48_000, 0.1 * number, np.float32) for number in range(1, 5)])
        assert vectors.shape == (4, 32) and batched._windows.mean_batch == 4
    finally:
        batched.close()


def test_bad_clips_and_texts_are_refused_naming_the_field(queries: SoundQueries, tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError) as refused:
        queries.clip(b"not a sound", "terms[1].file")
    assert refused.value.field == "terms[1].file"
    long = write_sound(tmp_path / "long.flac", [(TONES[0], 21.0)], kind="flac").read_bytes()
    with pytest.raises(AudioTooLarge, match="over the limit of 20 s") as refused_long:
        queries.clip(long)
    assert refused_long.value.field == "file"
    with pytest.raises(InvalidQuery, match="empty") as refused_text:
        queries.text("   ", "query")
    assert refused_text.value.field == "query"


@pytest.fixture(scope="module")
def sounds_service(tmp_path_factory: pytest.TempPathFactory, encoder: ClipEncoder,
                   audio: AudioEncoder) -> Iterator[SearchService]:
    root = tmp_path_factory.mktemp("sound-search")
    build(tiny_config(root / "bundle", audio=sound_corpus(root / "sounds"),
                      sound=AudioSampling(model=OFFLINE_AUDIO_MODEL)))
    bundle = load_bundle(root / "bundle")
    opened = SearchService(encoder, bundle, LIMITS, audio=audio)
    yield opened
    opened.close()
    bundle.close()


def test_each_sound_ranks_by_its_best_window_as_brute_force_over_the_stored_windows_does(
        sounds_service: SearchService, audio: AudioEncoder) -> None:
    ids = sounds_service.bundle.base_ids(Modality.AUDIO)  # every window's, under segment ids
    vectors = sounds_service.bundle.base_vectors(Modality.AUDIO, ids)
    for text in ("a dog barking", "rain on a roof", "a whistle"):
        scores = vectors @ audio.encode_texts([text])[0]
        best = {int(item): float(scores[segments.items_of(ids) == item].max()) for item in segments.items_of(ids)}
        expected = sorted(best.items(), key=lambda pair: -pair[1])
        answer = sounds_service.search_text(text, Modality.AUDIO, 10)
        assert [hit.item.id for hit in answer.hits] == [item for item, _ in expected]
        np.testing.assert_allclose([hit.score for hit in answer.hits], [score for _, score in expected], atol=1e-5)
        by_window = sounds_service.search_text(text, Modality.AUDIO, 20, options=ResultOptions(group_by="segments"))
        assert len(by_window.hits) == len(ids)
        np.testing.assert_allclose([hit.score for hit in by_window.hits], np.sort(scores)[::-1], atol=1e-5)


def test_an_item_of_the_audio_models_space_is_refused_in_a_composed_query(sounds_service: SearchService) -> None:
    from clipsearch.search.query import ItemTerm

    with pytest.raises(InvalidQuery, match="audio model's space") as refused:
        sounds_service.embed_terms([ItemTerm(0)])
    assert refused.value.field == "terms[0].item_id"


def test_a_chinese_text_is_refused_by_the_english_audio_model_but_found_by_keyword(
        sounds_service: SearchService) -> None:
    from clipsearch.search.hybrid import Ranking, SearchMode

    for mode in (SearchMode.VECTOR, SearchMode.HYBRID):
        with pytest.raises(InvalidQuery, match="reads English only") as refused:
            sounds_service.search_text("狗叫声", Modality.AUDIO, 5, field="query", ranking=Ranking(mode))
        assert refused.value.field == "query"
    assert sounds_service.search_text("狗叫声", Modality.AUDIO, 5, ranking=Ranking(SearchMode.KEYWORD)).hits == []


def test_without_its_audio_model_a_collection_is_served_and_its_sounds_searches_say_why(
        sounds_service: SearchService, encoder: ClipEncoder) -> None:
    from clipsearch.errors import ModelLoadError
    from clipsearch.search.open import opened_service

    def missing_extra(name: str) -> AudioEncoder:
        raise ModelLoadError("sound search needs the [audio] extra: pip install 'clipsearch[audio]'", "audio_model")

    with opened_service(encoder, sounds_service.bundle.path, audio_models=missing_extra) as service:
        service.warm_up()
        assert service.modalities == {Modality.AUDIO} and service.collection.count(Modality.AUDIO) == 3
        with pytest.raises(ModelLoadError, match=r"sounds cannot be searched: .*\[audio\] extra") as refused:
            service.search_text("a dog barking", Modality.AUDIO, 3)
        assert refused.value.field == "target"

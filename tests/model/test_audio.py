"""The audio model: the offline tiny CLAP loads through transformers' real path and gives unit vectors
of sounds and texts, the same alone or batched, the same in fp16 as in fp32 (the GPU's path, on CPU
tensors); it refuses windows longer than it reads, and a model that is not CLAP, with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.config import OFFLINE_AUDIO_MODEL
from clipsearch.errors import ModelLoadError
from clipsearch.model.audio import AudioEncoder, load_audio_encoder
from tests.support.sounds import NOISE, TONES, samples_of

pytest.importorskip("transformers")

RATE = 48_000


@pytest.fixture(scope="module")
def audio() -> AudioEncoder:
    return load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")


def test_the_offline_model_reads_10_s_at_48_khz_into_its_own_32_d_space(audio: AudioEncoder) -> None:
    assert (audio.sampling_rate, audio.window_s, audio.embedding_dim) == (RATE, 10.0, 32)
    assert audio.ref.name == OFFLINE_AUDIO_MODEL and audio.ref.pretrained is None


def test_sounds_and_texts_become_unit_vectors_and_different_sounds_differ(audio: AudioEncoder) -> None:
    windows = [samples_of([(frequency, 10.0)], RATE) for frequency in TONES[:3]] + [samples_of([(NOISE, 4.0)], RATE)]
    sounds = audio.encode_audio(windows)
    texts = audio.encode_texts(["a dog barking", "rain on a roof"])
    assert sounds.shape == (4, 32) and texts.shape == (2, 32) and sounds.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sounds, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    similarities = sounds @ sounds.T
    assert (similarities[~np.eye(4, dtype=bool)] < 0.999).all()


def test_a_window_is_embedded_the_same_alone_or_in_a_batch_and_on_every_load(audio: AudioEncoder) -> None:
    windows = [samples_of([(TONES[0], 10.0)], RATE), samples_of([(NOISE, 3.0)], RATE, seed=2)]
    together = audio.encode_audio(windows)
    np.testing.assert_allclose(audio.encode_audio(windows[1:]), together[1:], atol=1e-5)
    again = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")
    np.testing.assert_allclose(again.encode_audio(windows), together, atol=1e-5)
    np.testing.assert_allclose(again.encode_texts(["a whistle"]), audio.encode_texts(["a whistle"]), atol=1e-5)


def test_fp16_the_gpus_path_gives_the_fp32_vectors_closely(audio: AudioEncoder) -> None:
    half = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu", half=True)
    windows = [samples_of([(TONES[2], 10.0)], RATE), samples_of([(NOISE, 6.0)], RATE)]
    assert (half.encode_audio(windows) * audio.encode_audio(windows)).sum(axis=1).min() > 0.999
    assert float(half.encode_texts(["a bell"])[0] @ audio.encode_texts(["a bell"])[0]) > 0.999


def test_silence_and_an_empty_window_are_embedded_without_failing(audio: AudioEncoder) -> None:
    vectors = audio.encode_audio([np.zeros(RATE, np.float32), np.zeros(0, np.float32)])
    assert np.isfinite(vectors).all() and vectors.shape == (2, 32)


def test_a_window_longer_than_the_model_reads_is_refused(audio: AudioEncoder) -> None:
    with pytest.raises(ValueError, match="longer than the model's"):
        audio.encode_audio([np.zeros(11 * RATE, np.float32)])


def test_a_long_text_is_known_to_be_cut(audio: AudioEncoder) -> None:
    assert not audio.is_truncated("a dog barking")
    assert audio.is_truncated(" ".join(["rain"] * 200))
    assert np.isfinite(audio.encode_texts([" ".join(["rain"] * 200)])).all()


def test_a_model_that_is_not_clap_or_not_there_is_refused_naming_the_setting() -> None:
    from clipsearch.model.vqa import OFFLINE_DIR as BLIP_DIR

    with pytest.raises(ModelLoadError, match="is a blip model; give a CLAP model") as refused:
        load_audio_encoder(str(BLIP_DIR), "cpu")
    assert refused.value.field == "audio_model"
    with pytest.raises(ModelLoadError, match="cannot load the audio model"):
        load_audio_encoder("/no/such/model/directory", "cpu")


def test_without_transformers_loading_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # an import of it now fails, as when it is not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'clipsearch\[audio\]'"):
        load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")

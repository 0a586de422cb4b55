"""Sounds in a build: a recording is one item after the images, texts and videos, its windows the
rows of the audio index, each the audio model's embedding of that stretch of the file; copies are
duplicates, unreadable files are reported, and a build stopped midway resumes to the same bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
from clipsearch.errors import IndexSettingsInvalid
from clipsearch.ingest.build import build
from clipsearch.modality import Modality
from clipsearch.model.audio import load_audio_encoder
from clipsearch.store import segments
from clipsearch.store.bundle import load_bundle
from clipsearch.util.audio import read_audio
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config
from tests.support.sounds import TONES, sound_corpus, write_sound

pytest.importorskip("av")
pytest.importorskip("transformers")

TINY = AudioSampling(model=OFFLINE_AUDIO_MODEL)


def test_a_recording_is_one_item_whose_windows_are_the_rows_of_the_audio_index(tmp_path: Path) -> None:
    sounds = sound_corpus(tmp_path / "sounds")
    (sounds / "copy.bin").write_bytes((sounds / "rain.ogg").read_bytes())  # the same sound under another name
    (sounds / "cut.flac").write_bytes((sounds / "high.flac").read_bytes()[:60])
    (sounds / "notes.md").write_text("not a sound")  # recognised by content: left out, not reported
    summary = build(tiny_config(tmp_path / "out", audio=sounds, sound=TINY,
                                images=make_image_corpus(tmp_path / "images", 2),
                                texts=make_text_corpus(tmp_path / "texts.txt", 3)))
    assert summary.indexed == {"image": 2, "text": 3, "audio": 3} and summary.duplicates == 1
    assert [entry["uri"].rsplit("/", 1)[1] for entry in summary.report["skipped"]] == ["cut.flac"]
    audio = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")
    bundle = load_bundle(tmp_path / "out")
    try:
        sounds_found = sorted((item for item in bundle.items if item.modality is Modality.AUDIO),
                              key=lambda item: item.id)
        # After the images and the texts, by place in the listing: copy.bin (5, whose content rain.ogg repeats),
        # cut.flac (6, skipped), high.flac (7), rain.ogg (8, the duplicate), three.wav (9).
        assert [item.id for item in sounds_found] == [5, 7, 9]
        three = next(item for item in sounds_found if item.uri.endswith("three.wav"))
        spans = segments.spans_of(three.extra, Modality.AUDIO)
        assert spans[:3] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)] and spans[-1] == (26.0, 36.0)
        ids = segments.segment_ids(three.id, len(spans))
        clip = read_audio(sounds / "three.wav", audio.sampling_rate)
        expected = audio.encode_audio([clip.excerpt(start, end) for start, end in spans])
        np.testing.assert_allclose(bundle.base_vectors(Modality.AUDIO, ids), expected, atol=1e-5)
        high = next(item for item in sounds_found if item.uri.endswith("high.flac"))
        assert high.text == "a high whistle" and high.extra["audio"]["channels"] == 2
        assert bundle.manifest.dim_of(Modality.AUDIO) == audio.embedding_dim
    finally:
        bundle.close()


def test_a_build_stopped_midway_resumes_to_the_same_sounds(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for number in range(5):
        write_sound(sounds / f"tone_{number}.wav", [(TONES[number], 3.0 + number)])
    config = tiny_config(tmp_path / "out", audio=sounds, sound=TINY, batch_size=2, batches_per_shard=1)
    written: list[Path] = []

    def stop_after_two(path: Path) -> None:
        written.append(path)
        if len(written) == 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        build(config, on_shard_written=stop_after_two)
    resumed = build(config)
    assert resumed.resumed_shards == 2 and resumed.indexed == {"audio": 5}
    build(tiny_config(tmp_path / "whole", audio=sounds, sound=TINY, batch_size=2, batches_per_shard=1))
    first, whole = load_bundle(tmp_path / "out"), load_bundle(tmp_path / "whole")
    try:
        ids = whole.base_ids(Modality.AUDIO)
        assert first.base_ids(Modality.AUDIO).tolist() == ids.tolist()
        np.testing.assert_array_equal(first.base_vectors(Modality.AUDIO, ids), whole.base_vectors(Modality.AUDIO, ids))
    finally:
        first.close()
        whole.close()


def test_sounds_are_embedded_by_the_local_engine_only(tmp_path: Path) -> None:
    with pytest.raises(IndexSettingsInvalid, match="leave out --engine ray"):
        build(tiny_config(tmp_path / "out", audio=sound_corpus(tmp_path / "sounds"), sound=TINY, engine="ray"))

"""Sounds over HTTP: a clip finds its recording at the right window, a text finds sounds through the
audio model's own text tower, each sound once with its moments; the file is served with byte
ranges; queries that cross the two models' spaces, and bad clips, are refused naming the field."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.settings import Settings
from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
from clipsearch.ingest.build import build
from tests.support.browser import chromium, expect, first_card_for
from tests.support.corpora import make_image_corpus, tiny_config
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import ADMIN, LIMITS, serve
from tests.support.sounds import NOISE, TONES, samples_of, three_parts, write_sound

pytest.importorskip("av")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sound_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sound-corpus")
    sounds = root / "sounds"
    sounds.mkdir()
    three_parts(sounds / "three.wav")
    (sounds / "three.json").write_text(json.dumps({"album": "tones"}), encoding="utf-8")
    write_sound(sounds / "high.flac", [(TONES[4], 6.0)], kind="flac", channels=2, rate=44_100)
    (sounds / "high.txt").write_text("a high whistle", encoding="utf-8")
    write_sound(sounds / "rain.ogg", [(NOISE, 8.0)], kind="ogg", seed=7)
    (sounds / "broken.mp3").write_bytes(b"ID3" + bytes(64))
    make_image_corpus(root / "images", 4)
    out = tmp_path_factory.mktemp("sound-bundle") / "bundle"
    build(tiny_config(out, audio=sounds, sound=AudioSampling(model=OFFLINE_AUDIO_MODEL), images=root / "images"))
    return out


@pytest.fixture(scope="module")
def url(sound_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = Path(shutil.copytree(sound_bundle, tmp_path_factory.mktemp("served") / "bundle"))
    limits = {**LIMITS, "max_upload_mb": 8.0}  # a 10 s clip of float samples at 48 kHz is 1.9 MB
    settings = Settings(bundle_path=bundle, device="cpu", admin_key=ADMIN, max_query_audio_s=30,
                        **limits)  # type: ignore[arg-type]
    with serve(settings) as served:
        yield served


@pytest.fixture()
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60, headers={"X-Admin-Key": ADMIN}) as client:
        yield client


def _sound_id(http: httpx.Client, name: str) -> int:
    found = http.post("/search/text", json={"text": "sound", "target": "audio", "k": 10}).json()["results"]
    return next(hit["id"] for hit in found if hit["uri"].endswith(name))


def _wav(samples: np.ndarray, rate: int = 48_000) -> bytes:
    """Mono float samples as a WAV file's bytes."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as output:
        stream = output.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


def test_a_clip_of_a_recording_from_10_to_20_s_finds_it_with_the_window_covering_10_to_20_s(
        http: httpx.Client) -> None:
    recording = samples_of([(TONES[0], 12.0), (NOISE, 12.0), (TONES[3], 12.0)], 48_000)
    clip = _wav(recording[10 * 48_000:20 * 48_000])
    answer = http.post("/search/audio", files={"file": ("clip.wav", clip)}, data={"k": "5"})
    assert answer.status_code == 200, answer.text
    best = answer.json()["results"][0]
    assert best["uri"].endswith("three.wav") and best["modality"] == "audio"
    assert (best["segment"]["start_s"], best["segment"]["end_s"]) == (10.0, 20.0)
    assert best["score"] == pytest.approx(1.0, abs=1e-4)
    assert best["segment"]["thumbnail"] is None  # a sound has no frame to show
    assert best["score"] == max(moment["score"] for moment in best["moments"])


def test_a_text_query_finds_each_sound_once_with_its_best_window_and_moments_in_time_order(
        http: httpx.Client) -> None:
    answer = http.post("/search/text", json={"text": "a dog barking", "target": "audio", "k": 10})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert sorted(hit["uri"].rsplit("/", 1)[1] for hit in results) == ["high.flac", "rain.ogg", "three.wav"]
    three = next(hit for hit in results if hit["uri"].endswith("three.wav"))
    starts = [moment["start_s"] for moment in three["moments"]]
    assert starts == sorted(starts) and len(starts) == 5  # its 5 best windows
    # 36 s in 10 s windows every 5 s (0–10 … 25–35), and the last one ending at the end (26–36).
    assert three["metadata"]["audio"]["duration_s"] == 36.0 and len(three["metadata"]["audio"]["segments"]) == 7


def test_group_by_segments_returns_each_window_found_as_a_result(http: httpx.Client) -> None:
    answer = http.post("/search/text", json={"text": "tone", "target": "audio", "k": 20, "group_by": "segments"})
    assert answer.status_code == 200, answer.text
    windows = [(hit["id"], hit["segment"]["position"]) for hit in answer.json()["results"]]
    assert len(windows) == len(set(windows)) == 7 + 1 + 1


def test_keyword_and_hybrid_searches_find_a_sound_by_its_caption(http: httpx.Client) -> None:
    for mode in ("keyword", "hybrid"):
        answer = http.post("/search/text", json={"text": "whistle", "target": "audio", "mode": mode, "k": 3})
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["uri"].endswith("high.flac")


def test_a_filter_on_metadata_narrows_sounds(http: httpx.Client) -> None:
    answer = http.post("/search/text", json={"text": "tone", "target": "audio", "k": 10,
                                             "filter": {"key": "album", "match": {"value": "tones"}}})
    assert [hit["uri"].rsplit("/", 1)[1] for hit in answer.json()["results"]] == ["three.wav"]


def test_the_sound_file_is_served_with_byte_ranges(http: httpx.Client) -> None:
    item_id = _sound_id(http, "three.wav")
    whole = http.get(f"/items/{item_id}/audio")
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    part = http.get(f"/items/{item_id}/audio", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == whole.content[:100]
    flac = http.get(f"/items/{_sound_id(http, 'high.flac')}/audio")
    assert flac.headers["content-type"] == "audio/flac"


def test_a_sound_has_no_frame_and_an_image_is_not_a_sound(http: httpx.Client) -> None:
    sound = _sound_id(http, "three.wav")
    assert http.get(f"/items/{sound}/frame").json()["field"] == "id"
    image = http.post("/search/text", json={"text": "photo", "k": 1}).json()["results"][0]["id"]
    refused = http.get(f"/items/{image}/audio")
    assert refused.status_code == 422 and "not an audio" in refused.json()["reason"]


PICTURE = image_bytes(noise_image(1))


@pytest.mark.parametrize(("route", "request_args", "field"), [
    ("/search/image", {"files": {"file": ("a.png", PICTURE)}, "data": {"target": "audio"}}, "target"),
    ("/search/audio", {"files": {"file": ("a.wav", b"")}, "data": {"target": "image"}}, "target"),
    ("/search", {"json": {"queries": [{"text": "rain"}], "target": "audio"}}, "target"),
    ("/search/audio", {"files": {"file": ("a.wav", b"not a sound at all")}}, "file"),
    ("/search/audio", {"files": {"file": ("a.png", PICTURE)}}, "file"),
])
def test_queries_across_the_two_models_spaces_and_bad_clips_are_refused_naming_the_field(
        http: httpx.Client, route: str, request_args: dict[str, object], field: str) -> None:
    response = http.post(route, **request_args)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_a_clip_longer_than_the_query_limit_is_refused_with_413(http: httpx.Client) -> None:
    clip = _wav(samples_of([(TONES[1], 31.0)], 48_000))
    response = http.post("/search/audio", files={"file": ("long.wav", clip)})
    assert response.status_code == 413 and response.json()["field"] == "file"


def test_info_names_the_audio_model_and_counts_the_sounds(http: httpx.Client) -> None:
    info = http.get("/info").json()
    assert info["audio"]["model"] == OFFLINE_AUDIO_MODEL and info["audio"]["embedding_dim"] == 32
    assert info["counts"]["audio"] == 3 and info["indices"]["audio"]["exact"]


def test_an_unreadable_sound_file_is_reported_by_the_build_and_not_indexed(sound_bundle: Path) -> None:
    report = json.loads((sound_bundle / "report.json").read_text())
    assert [entry["uri"].rsplit("/", 1)[1] for entry in report["skipped"]] == ["broken.mp3"]
    manifest = json.loads((sound_bundle / "manifest.json").read_text())
    assert manifest["audio"] == {"model": OFFLINE_AUDIO_MODEL, "hop_s": 5.0, "window_s": 10.0,
                                 "sampling_rate": 48_000, "embedding_dim": 32, "video_sound": False}


@pytest.fixture()
def writable(sound_bundle: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    bundle = Path(shutil.copytree(sound_bundle, tmp_path / "bundle"))
    settings = Settings(bundle_path=bundle, device="cpu", admin_key=ADMIN, auto_compact=False,  # type: ignore[arg-type]
                        reload_poll_s=3600, audio_max_seconds=20, **{**LIMITS, "max_upload_mb": 8.0})
    with serve(settings) as served, httpx.Client(base_url=served, timeout=60,
                                                 headers={"X-Admin-Key": ADMIN}) as client:
        yield client, bundle


def test_a_sound_written_to_the_collection_is_cut_as_the_build_cut_and_found_at_its_window(
        writable: tuple[httpx.Client, Path], tmp_path: Path) -> None:
    from clipsearch.store.compaction import compact

    http, bundle = writable
    upload = write_sound(tmp_path / "new.mp3", [(TONES[2], 8.0), (NOISE, 8.0)], kind="mp3", seed=11)
    written = http.post("/items", files=[("file", ("new.mp3", upload.read_bytes()))],
                        data={"key": "clips/new", "caption": "a tone then hiss", "metadata": '{"album": "new"}'})
    assert written.status_code == 200, written.text
    [sound_id] = written.json()["ids"]
    item = http.get(f"/items/{sound_id}").json()
    assert item["modality"] == "audio" and item["caption"] == "a tone then hiss"
    spans = item["metadata"]["audio"]["segments"]
    assert spans[0] == [0.0, 10.0] and spans[-1][1] == pytest.approx(16.0, abs=0.1)  # an MP3 pads its frames
    clip = _wav(samples_of([(NOISE, 8.0)], 48_000, seed=11)[:6 * 48_000])
    assert http.post("/search/audio", files={"file": ("clip.wav", clip)},
                     data={"k": "10"}).json()["matched"] == 4
    served = http.get(f"/items/{sound_id}/audio", headers={"Range": "bytes=0-15"})
    assert served.status_code == 206 and served.content == upload.read_bytes()[:16]
    assert served.headers["content-type"] == "audio/mpeg"
    edited = http.patch(f"/items/{sound_id}", json={"metadata": {"album": "renamed"}})
    assert edited.status_code == 200 and edited.json()["metadata"]["audio"]["segments"] == spans
    before = http.post("/search/text", json={"text": "hiss", "target": "audio", "k": 10,
                                             "group_by": "segments"}).json()["results"]

    summary = compact(bundle)  # the live sound folded into the base, its windows with it
    assert summary is not None and summary.counts["audio"] == 4
    after = http.post("/search/text", json={"text": "hiss", "target": "audio", "k": 10,
                                            "group_by": "segments"}).json()["results"]
    assert [(hit["id"], hit["segment"]["position"]) for hit in after] == \
        [(hit["id"], hit["segment"]["position"]) for hit in before]
    assert http.delete(f"/items/{sound_id}").status_code == 200
    assert http.post("/search/text", json={"text": "x", "target": "audio", "k": 10}).json()["matched"] == 3


def test_a_deleted_sound_is_no_longer_found(writable: tuple[httpx.Client, Path]) -> None:
    http, _ = writable
    item_id = _sound_id(http, "rain.ogg")
    assert http.delete(f"/items/{item_id}").status_code == 200
    found = http.post("/search/text", json={"text": "rain", "target": "audio", "k": 10}).json()["results"]
    assert item_id not in [hit["id"] for hit in found]
    assert http.get(f"/items/{item_id}").status_code == 404


def test_a_sound_written_past_the_servers_bound_is_refused_and_nothing_is_written(
        writable: tuple[httpx.Client, Path], tmp_path: Path) -> None:
    http, _ = writable
    long = write_sound(tmp_path / "long.flac", [(TONES[0], 21.0)], kind="flac")
    picture = image_bytes(noise_image(2))
    response = http.post("/items", files=[("file", ("a.png", picture)), ("file", ("long.flac", long.read_bytes()))])
    assert response.status_code == 413 and response.json()["field"] == "file[1]"
    assert http.post("/search/text", json={"text": "x", "target": "audio", "k": 10}).json()["matched"] == 3


def test_the_page_plays_a_sound_hit_from_its_window_and_searches_with_an_uploaded_clip(
        url: str, tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(_wav(samples_of([(TONES[0], 12.0), (NOISE, 12.0), (TONES[3], 12.0)], 48_000)[
        10 * 48_000:20 * 48_000]))
    with chromium() as browser:
        page, card = first_card_for(browser, url, "audio", "a whistle")
        expect(card.locator("audio")).to_have_attribute("src", re.compile(r"/items/\d+/audio#t=\d"))
        expect(card.locator(".moments .moment").first).to_be_visible()
        assert card.locator(".moment img").count() == 0  # a window has no frame to show
        page.fill("#query-text", "")
        page.set_input_files("#query-file", str(clip))
        best = page.locator(".card").first
        expect(best.locator("audio")).to_have_attribute("src", re.compile(r"/audio#t=10(\.0)?$"))
        assert page.locator("#image-query-preview").is_hidden()


def test_the_client_searches_with_a_clip_and_returns_each_sound_with_its_window(url: str, tmp_path: Path) -> None:
    from clipsearch.client import ClipSearchClient

    recording = samples_of([(TONES[0], 12.0), (NOISE, 12.0), (TONES[3], 12.0)], 48_000)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(_wav(recording[10 * 48_000:20 * 48_000]))
    with ClipSearchClient(url, admin_key=ADMIN) as client:
        hit = client.search_audio(clip, k=1).results[0]
        assert hit.uri.endswith("three.wav") and hit.segment is not None
        assert (hit.segment.start_s, hit.segment.end_s) == (10.0, 20.0) and hit.segment.thumbnail is None
        with pytest.raises(ValueError, match="no frame"):
            client.thumbnail(hit.segment)
        by_text = client.search_text("a whistle", target="audio", k=10, group_by="segments").results
        assert len(by_text) == 9 and all(found.segment is not None for found in by_text)


def test_fuzzing_the_search_and_item_routes_of_a_collection_with_sounds_finds_no_failure(
        url: str, tmp_path: Path) -> None:
    from tests.support.fuzzing import fuzz

    finished = fuzz(url, tmp_path, "--include-path-regex", "^/(search|items/)", "--header", f"X-API-Key: {ADMIN}",
                    exclude="ignored_auth")
    assert finished.returncode == 0, finished.stdout[-6000:]
    assert httpx.post(f"{url}/search/text", json={"text": "after the fuzz", "target": "audio"}).status_code == 200


@pytest.mark.parametrize(("kind", "codec", "media_type"), [("m4a", "aac", "audio/mp4"), ("webm", "opus", "audio/webm")])
def test_a_phones_or_a_browsers_recording_written_to_the_collection_is_a_sound_served_as_such(
        writable: tuple[httpx.Client, Path], tmp_path: Path, kind: str, codec: str, media_type: str) -> None:
    """An M4A (phones' voice memos) and a sound-only WebM (browsers' MediaRecorder) are sounds, though
    their containers also hold videos."""
    http, _ = writable
    channels = 2 if kind == "m4a" else 1
    memo = write_sound(tmp_path / f"memo.{kind}", [(TONES[1], 4.0)], kind=kind, rate=48_000, channels=channels)
    written = http.post("/items", files=[("file", (f"memo.{kind}", memo.read_bytes()))])
    assert written.status_code == 200, written.text
    [memo_id] = written.json()["ids"]
    item = http.get(f"/items/{memo_id}").json()
    assert item["modality"] == "audio" and item["uri"].endswith(f".{kind}")
    assert item["metadata"]["audio"]["codec"] == codec and item["metadata"]["audio"]["channels"] == channels
    assert http.get(f"/items/{memo_id}/audio").headers["content-type"] == media_type
    found = http.post("/search/audio", files={"file": (f"clip.{kind}", memo.read_bytes())})
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["id"] == memo_id  # the same recording, embedded alike


@pytest.fixture(scope="module")
def video_sound_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over a collection of videos whose sound tracks are indexed as sounds: talk.mp4 (a 220 Hz
    tone 0–10 s, then noise to 20 s, under two scenes) and silent.webm (no sound track)."""
    from tests.support.videos import SCENE_COLOURS, write_scenes

    videos = tmp_path_factory.mktemp("videos")
    write_scenes(videos / "talk.mp4", [(SCENE_COLOURS[0], 10.0), (SCENE_COLOURS[1], 10.0)], fps=2,
                 sound=[(TONES[0], 10.0), (NOISE, 10.0)])
    write_scenes(videos / "silent.webm", [(SCENE_COLOURS[2], 3.0)], codec="libvpx-vp9")
    out = tmp_path_factory.mktemp("video-sound-bundle") / "bundle"
    build(tiny_config(out, videos=videos, sound=AudioSampling(model=OFFLINE_AUDIO_MODEL, video_sound=True)))
    settings = Settings(bundle_path=out, device="cpu", admin_key=ADMIN, auto_compact=False,  # type: ignore[arg-type]
                        reload_poll_s=3600, **{**LIMITS, "max_upload_mb": 8.0})
    with serve(settings) as served:
        yield served


def test_a_clip_of_a_videos_sound_finds_the_video_at_that_moment_and_its_file_plays_as_the_video(
        video_sound_url: str, tmp_path: Path) -> None:
    from tests.support.videos import SCENE_COLOURS, write_scenes

    with httpx.Client(base_url=video_sound_url, timeout=60, headers={"X-Admin-Key": ADMIN}) as http:
        clip = _wav(samples_of([(TONES[0], 10.0), (NOISE, 10.0)], 48_000)[10 * 48_000:])
        found = http.post("/search/audio", files={"file": ("clip.wav", clip)}, data={"k": "10"}).json()
        assert found["matched"] == 1  # the silent video has no sound track
        [hit] = found["results"]
        assert hit["modality"] == "audio" and hit["uri"].endswith("talk.mp4")
        assert hit["metadata"]["audio"]["of_video"] is True
        assert (hit["segment"]["start_s"], hit["segment"]["end_s"]) == (10.0, 20.0)
        served = http.get(f"/items/{hit['id']}/audio", headers={"Range": "bytes=0-15"})
        assert served.status_code == 206 and served.headers["content-type"] == "video/mp4"
        recordings = {"must_not": [{"key": "metadata.audio.of_video", "match": {"value": True}}]}
        assert http.post("/search/text", json={"text": "x", "target": "audio", "filter": recordings}).json()[
            "matched"] == 0

        upload = write_scenes(tmp_path / "new.mp4", [(SCENE_COLOURS[3], 2.0)], sound=[(TONES[4], 2.0)])
        written = http.post("/items", files=[("file", ("new.mp4", upload.read_bytes()))], data={"key": "new"})
        assert written.status_code == 200, written.text
        [video_id] = written.json()["ids"]
        assert http.get(f"/items/{video_id}").json()["modality"] == "video"
        tracks = http.post("/search/text", json={"text": "a whistle", "target": "audio", "k": 10}).json()
        assert tracks["matched"] == 2
        [track_id] = [hit["id"] for hit in tracks["results"] if hit["id"] != found["results"][0]["id"]]
        assert http.get(f"/items/{track_id}").json()["uri"] == http.get(f"/items/{video_id}").json()["uri"]
        assert http.patch(f"/items/{track_id}", json={"caption": "x"}).json()["field"] == "item_id"
        deleted = http.request("DELETE", f"/items/{video_id}")
        assert deleted.status_code == 200 and sorted(deleted.json()["deleted"]) == sorted([video_id, track_id])
        assert http.post("/search/text", json={"text": "a whistle", "target": "audio"}).json()["matched"] == 1


def test_the_page_plays_a_videos_sound_track_hit_as_the_video_from_its_window(video_sound_url: str) -> None:
    with chromium() as browser:
        _, card = first_card_for(browser, video_sound_url, "audio", "someone talking")
        expect(card.locator("video")).to_have_attribute("src", re.compile(r"/items/\d+/audio#t=\d"))
        assert card.locator("audio").count() == 0

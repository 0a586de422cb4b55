"""`indexer sync`: after new, changed, moved, renamed and deleted files, a synced bundle answers
every search exactly as a rebuild of the same sources does, unchanged items keep their ids, and
a second sync reads no unchanged file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import QueryLimits, VideoSampling
from clipsearch.ingest.build import build
from clipsearch.ingest.sync import SyncSources, SyncSummary, sync
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, TextEntry
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog, count_live_changes
from clipsearch.store.segments import SegmentSpan, is_sound_of_video
from indexer.cli import main
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config
from tests.support.imagefiles import image_bytes, noise_image, save
from tests.support.small_disk import SmallDisk


@pytest.fixture()
def corpus(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A built bundle, and the folder and text file it was built from."""
    images = make_image_corpus(tmp_path / "images", 12)
    texts = make_text_corpus(tmp_path / "texts.txt", 6)
    build(tiny_config(tmp_path / "bundle", images=images, texts=texts))
    yield tmp_path / "bundle", images, texts


def _change_the_sources(images: Path, texts: Path) -> None:
    save(images / "new_one.png", image_bytes(noise_image(501)))                      # added
    save(images / "deeper" / "new_two.png", image_bytes(noise_image(502)))           # added, in a new folder
    save(images / "picture_002.png", image_bytes(noise_image(503)))                  # same name, new content
    (images / "picture_004.png").unlink()                                            # deleted
    os.replace(images / "nested" / "picture_005.png", images / "renamed_005.png")    # moved and renamed
    (images / "picture_000.txt").write_text("a new caption for picture 0")           # sidecar only
    lines = texts.read_text().splitlines()
    lines[1] = "a sentence that was rewritten"
    texts.write_text("\n".join([*lines, "a sentence added at the end"]) + "\n")


def _open(path: Path, encoder: ClipEncoder) -> tuple[Bundle, LiveLog, SearchService]:
    bundle = load_bundle(path)
    live = LiveLog(path / LIVE_FILE, bundle.items, encoder.embedding_dim)
    return bundle, live, SearchService(encoder, bundle, QueryLimits(max_k=50), live=live)


def _answers(service: SearchService, queries: np.ndarray, target: Modality) -> list[list[tuple[str, float]]]:
    return [[(hit.item.uri, round(hit.score, 5)) for hit in service.search_vector(QueryVector(query), target, 50).hits]
            for query in queries]


def test_a_synced_bundle_answers_as_a_rebuild_and_keeps_unchanged_ids(corpus: tuple[Path, Path, Path],
                                                                     encoder: ClipEncoder, tmp_path: Path) -> None:
    path, images, texts = corpus
    bundle, live, service = _open(path, encoder)
    ids_before = {item.uri: item.id for item in bundle.items}
    _change_the_sources(images, texts)
    summary = sync(bundle, live, encoder, SyncSources(images, texts), progress=False)
    assert (summary.added, summary.updated, summary.moved, summary.removed) == (3, 3, 1, 1), summary
    assert summary.skipped == []
    rebuilt_path = tmp_path / "rebuilt"
    build(tiny_config(rebuilt_path, images=images, texts=texts))
    rebuilt = load_bundle(rebuilt_path)
    fresh = SearchService(encoder, rebuilt, QueryLimits(max_k=50))
    try:
        queries = np.concatenate([encoder.encode_texts(["a photo", "a sentence"]),
                                  fresh.collection.stored_vectors(Modality.IMAGE, np.array([0, 3]))])
        for target in Modality:
            assert service.collection.count(target, service.collection.refresh()) == fresh.collection.count(target)
        for target in fresh.modalities:
            assert _answers(service, queries, target) == _answers(fresh, queries, target)
        synced = {hit.item.uri: hit.item for hit in service.search(queries[0], Modality.IMAGE, 50)}
        assert synced[str((images / "picture_000.png").resolve())].text == "a new caption for picture 0"
        for uri, item in synced.items():
            if uri in ids_before and "picture_002" not in uri:
                assert item.id == ids_before[uri], uri  # unchanged (or only re-captioned): same id
    finally:
        fresh.close()
        rebuilt.close()
        service.close()
        live.close()
        bundle.close()


def test_a_second_sync_changes_nothing_and_reads_no_unchanged_file(corpus: tuple[Path, Path, Path],
                                                                   encoder: ClipEncoder,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path, images, texts = corpus
    bundle, live, service = _open(path, encoder)
    try:
        first = sync(bundle, live, encoder, SyncSources(images, texts), progress=False)
        assert first.unchanged == 12 + 6  # the first sync reads every file once, to record its size and time
        reads: list[Path] = []
        original = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
        second = sync(bundle, live, encoder, SyncSources(images, texts), progress=False)
        assert (second.added, second.updated, second.moved, second.removed, second.unchanged) == (0, 0, 0, 0, 18)
        assert reads == []
    finally:
        service.close()
        live.close()
        bundle.close()


def test_sync_leaves_items_added_over_http_alone(corpus: tuple[Path, Path, Path], encoder: ClipEncoder) -> None:
    path, images, texts = corpus
    bundle, live, service = _open(path, encoder)
    try:
        [kept] = CollectionWriter(service).add_texts([TextEntry("added by hand", "notes/1")])
        summary = sync(bundle, live, encoder, SyncSources(images, texts), progress=False)
        assert summary.removed == 0
        assert service.collection.refresh() and service.collection.item(kept).text == "added by hand"
    finally:
        service.close()
        live.close()
        bundle.close()


def test_a_file_that_no_longer_decodes_is_skipped_and_its_old_item_removed(corpus: tuple[Path, Path, Path],
                                                                          encoder: ClipEncoder) -> None:
    path, images, _ = corpus
    (images / "picture_006.png").write_bytes(b"not a picture any more")
    bundle, live, service = _open(path, encoder)
    try:
        summary = sync(bundle, live, encoder, SyncSources(images), progress=False)
        assert [uri.rsplit("/", 1)[1] for uri, _ in summary.skipped] == ["picture_006.png"]
        uris = {hit.item.uri for hit in service.search(encoder.encode_texts(["x"])[0], Modality.IMAGE, 50)}
        assert not any(uri.endswith("picture_006.png") for uri in uris) and len(uris) == 11
    finally:
        service.close()
        live.close()
        bundle.close()


def test_the_sync_command_prints_what_it_did(corpus: tuple[Path, Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, images, texts = corpus
    shutil.copy(images / "picture_002.png", images / "copy_of_002.png")
    with pytest.raises(SystemExit):  # the bundle names the model
        main(["sync", "--bundle", str(path), "--images", str(images), "--model", "tiny"])
    assert "--bundle names the model: leave out --model and --pretrained" in capsys.readouterr().err
    assert main(["sync", "--bundle", str(path), "--images", str(images), "--texts", str(texts), "--no-progress",
                 "--device", "cpu", "--backend", "torch", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "added 0, updated 0, moved 0, removed 0, unchanged 18, skipped 1" in printed
    assert "copy_of_002.png: duplicate of an item already indexed" in printed


def test_summary_describes_every_count() -> None:
    assert SyncSummary(1, 2, 3, 4, 5, [("a", "b")], 1.5).describe() == \
        "added 1, updated 2, moved 3, removed 4, unchanged 5, skipped 1 in 1.5 s"
    assert SyncSummary(1, 0, 0, 0, 0, [], 1.5, text_unread=[("a", "text not read within 20 s")]).describe() == \
        "added 1, updated 0, moved 0, removed 0, unchanged 0, skipped 0, text of 1 not read in 1.5 s"


@pytest.mark.parametrize(("point", "changes"), [("sync:embedded", 0), ("live:committing", 0),
                                                 ("live:committed", 40 + 1)])
def test_kill_9_during_a_sync_leaves_the_collection_before_or_after_it_never_between(
        corpus: tuple[Path, Path, Path], point: str, changes: int) -> None:
    path, images, _ = corpus
    for number in range(40):
        save(images / "more" / f"{number}.png", image_bytes(noise_image(700 + number)))
    (images / "picture_000.png").unlink()
    command = [sys.executable, "-m", "indexer", "sync", "--bundle", str(path), "--images", str(images),
               "--no-progress", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    killed = subprocess.run(command, env={**os.environ, "CLIPSEARCH_KILL_AT": point}, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, "the kill landed at the point named"  # else it never got there
    assert count_live_changes(path) == changes  # nothing, or all of it: 40 added and 1 removed
    load_bundle(path).close()  # loads, checksums and all
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert count_live_changes(path) == 41


def test_a_sync_that_meets_a_full_disk_changes_nothing_and_succeeds_when_run_again(
        disk: SmallDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_image_corpus(tmp_path / "images", 12)
    texts = make_text_corpus(tmp_path / "texts.txt", 6)
    path = disk.path / "bundle"
    build(tiny_config(path, images=images, texts=texts))
    _change_the_sources(images, texts)
    disk.fill()
    command = ["sync", "--bundle", str(path), "--images", str(images), "--texts", str(texts), "--no-progress",
               "--device", "cpu", "--backend", "torch", "--workers", "0"]

    assert main(command) == 2
    errors = capsys.readouterr().err
    # A full disk has no room for the log's shared-memory file either: the sync stops opening it.
    assert f"error: no space left for opening the live log at {path / LIVE_FILE}: 0 B free" in errors
    assert f"free of 16.0 MiB on the filesystem at {disk.path}; nothing of it was kept" in errors
    assert count_live_changes(path) == 0

    disk.empty()
    assert main(command) == 0
    assert "added 3, updated 3, moved 1, removed 1" in capsys.readouterr().out


def _video_answers(service: SearchService, queries: np.ndarray, group_by: str
                   ) -> list[list[tuple[float, str, SegmentSpan | None]]]:
    """Each query's video hits as (score, uri, segment), best first; segments of one still scene score
    alike, and their order among themselves is not the answer's."""
    return [sorted((round(hit.score, 5), hit.item.uri, hit.segment) for hit in service.search_vector(
        QueryVector(query), Modality.VIDEO, 20, ResultOptions(group_by=group_by)).hits)[::-1] for query in queries]


def test_a_synced_video_folder_answers_as_a_rebuild_and_a_second_sync_changes_nothing(
        tmp_path: Path, encoder: ClipEncoder) -> None:
    pytest.importorskip("av")
    from tests.support.videos import SCENE_COLOURS, four_scenes, write_scenes

    videos = tmp_path / "videos"
    videos.mkdir()
    four_scenes(videos / "four.mp4")
    write_scenes(videos / "gone.mp4", [(SCENE_COLOURS[4], 2.0)])
    write_scenes(videos / "moved.webm", [(SCENE_COLOURS[5], 1.0), (SCENE_COLOURS[0], 1.0)],
                 codec="libvpx-vp9", container="webm")
    build(tiny_config(tmp_path / "bundle", videos=videos, video=replace(VideoSampling(), max_gap_s=1.5)))
    bundle, live, service = _open(tmp_path / "bundle", encoder)
    four_id = next(item.id for item in bundle.items if item.uri.endswith("four.mp4"))
    (videos / "gone.mp4").unlink()                                                         # deleted
    os.replace(videos / "moved.webm", videos / "renamed.webm")                             # moved
    write_scenes(videos / "new.mkv", [(SCENE_COLOURS[3], 4.0)], container="matroska")      # added: 0-1.5-3-4
    (videos / "four.txt").write_text("a caption for four")                                 # sidecar only
    summary = sync(bundle, live, encoder, SyncSources(videos=videos), batch_size=8, progress=False)
    assert (summary.added, summary.updated, summary.moved, summary.removed) == (1, 1, 1, 1)
    service.collection.refresh()
    build(tiny_config(tmp_path / "rebuilt", videos=videos, video=replace(VideoSampling(), max_gap_s=1.5)))
    _, _, rebuilt = _open(tmp_path / "rebuilt", encoder)
    queries = encoder.encode_texts(["a red scene", "blue", "yellow at night"])
    for group_by in ("item", "segments"):
        assert _video_answers(service, queries, group_by) == _video_answers(rebuilt, queries, group_by)
    assert service.collection.item(four_id).text == "a caption for four"  # kept its id
    new = next(item for item in service.collection.state.items.values() if item.uri.endswith("new.mkv"))
    assert new.extra["video"]["segments"] == [[0.0, 1.5], [1.5, 3.0], [3.0, 4.0]]
    again = sync(bundle, live, encoder, SyncSources(videos=videos), batch_size=8, progress=False)
    assert (again.added, again.updated, again.moved, again.removed, again.unchanged) == (0, 0, 0, 0, 3)


def test_a_synced_sound_folder_answers_as_a_rebuild_and_a_second_sync_changes_nothing(
        tmp_path: Path, encoder: ClipEncoder) -> None:
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
    from clipsearch.model.audio import load_audio_encoder
    from tests.support.sounds import NOISE, TONES, three_parts, write_sound

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    three_parts(sounds / "three.wav")
    write_sound(sounds / "gone.flac", [(TONES[1], 4.0)], kind="flac")
    write_sound(sounds / "moved.ogg", [(NOISE, 6.0)], kind="ogg", seed=5)
    cutting = AudioSampling(model=OFFLINE_AUDIO_MODEL, hop_s=4.0)
    build(tiny_config(tmp_path / "bundle", audio=sounds, sound=cutting))
    audio = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")
    bundle = load_bundle(tmp_path / "bundle")
    live = LiveLog(tmp_path / "bundle" / LIVE_FILE, bundle.items, encoder.embedding_dim)
    service = SearchService(encoder, bundle, QueryLimits(max_k=50), live=live, audio=audio)
    three_id = next(item.id for item in bundle.items if item.uri.endswith("three.wav"))
    (sounds / "gone.flac").unlink()                                                     # deleted
    os.replace(sounds / "moved.ogg", sounds / "renamed.ogg")                            # moved
    write_sound(sounds / "new.mp3", [(TONES[4], 14.0)], kind="mp3")                     # added
    (sounds / "three.txt").write_text("a caption for three")                            # sidecar only
    summary = sync(bundle, live, encoder, SyncSources(audio=sounds), batch_size=8, progress=False, audio=audio)
    assert (summary.added, summary.updated, summary.moved, summary.removed) == (1, 1, 1, 1)
    service.collection.refresh()
    build(tiny_config(tmp_path / "rebuilt", audio=sounds, sound=cutting))
    rebuilt_bundle = load_bundle(tmp_path / "rebuilt")
    rebuilt = SearchService(encoder, rebuilt_bundle, QueryLimits(max_k=50), audio=audio)

    def answers(searched: SearchService, group_by: str) -> list[list[tuple[float, str, SegmentSpan | None]]]:
        return [sorted((round(hit.score, 5), hit.item.uri, hit.segment) for hit in searched.search_text(
            text, Modality.AUDIO, 20, options=ResultOptions(group_by=group_by)).hits)[::-1]
            for text in ("a dog barking", "rain on a roof", "a whistle")]

    for group_by in ("item", "segments"):
        assert answers(service, group_by) == answers(rebuilt, group_by)
    assert service.collection.item(three_id).text == "a caption for three"  # kept its id and its windows
    assert service.collection.item(three_id).extra["audio"]["segments"][0] == [0.0, 10.0]
    again = sync(bundle, live, encoder, SyncSources(audio=sounds), batch_size=8, progress=False, audio=audio)
    assert (again.added, again.updated, again.moved, again.removed, again.unchanged) == (0, 0, 0, 0, 3)
    for opened in (service, rebuilt):
        opened.close()


def test_videos_sound_tracks_follow_their_videos_through_a_sync_as_a_rebuild_would(
        tmp_path: Path, encoder: ClipEncoder) -> None:
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
    from clipsearch.model.audio import load_audio_encoder
    from tests.support.sounds import NOISE, TONES, write_sound
    from tests.support.videos import SCENE_COLOURS, write_scenes

    def video(name: str, colour: int, sound: list[tuple[float, float]] | None) -> None:
        write_scenes(videos / name, [(SCENE_COLOURS[colour], 2.0), (SCENE_COLOURS[colour + 1], 2.0)], sound=sound)

    videos, sounds = tmp_path / "videos", tmp_path / "sounds"
    videos.mkdir()
    sounds.mkdir()
    video("talk.mp4", 0, [(TONES[0], 4.0)])
    video("quiet.mp4", 1, None)
    video("gone.mp4", 2, [(TONES[2], 4.0)])
    video("moved.mp4", 3, [(NOISE, 4.0)])
    write_sound(sounds / "hum.wav", [(TONES[1], 3.0)])
    cutting = AudioSampling(model=OFFLINE_AUDIO_MODEL, video_sound=True)
    build(tiny_config(tmp_path / "bundle", videos=videos, audio=sounds, sound=cutting))
    audio = load_audio_encoder(OFFLINE_AUDIO_MODEL, "cpu")
    bundle = load_bundle(tmp_path / "bundle")
    live = LiveLog(tmp_path / "bundle" / LIVE_FILE, bundle.items, encoder.embedding_dim)
    service = SearchService(encoder, bundle, QueryLimits(max_k=50), live=live, audio=audio)
    (videos / "gone.mp4").unlink()                                          # both items go
    os.replace(videos / "moved.mp4", videos / "renamed.mp4")                # both move
    video("quiet.mp4", 1, [(TONES[4], 4.0)])                                # gains a sound track
    video("talk.mp4", 0, None)                                              # loses its sound track
    video("new.mkv", 4, [(TONES[3], 4.0)])                                  # both added
    # The sync is told of the videos only: the sound files' item is not its to touch.
    summary = sync(bundle, live, encoder, SyncSources(videos=videos), batch_size=8, progress=False, audio=audio)
    # Added: new.mkv's video and sound track, quiet.mp4's sound track. Updated: talk.mp4's and quiet.mp4's
    # videos. Removed: gone.mp4's video and sound track, talk.mp4's sound track.
    assert (summary.added, summary.updated, summary.moved, summary.removed) == (3, 2, 2, 3)
    assert summary.skipped == []
    service.collection.refresh()
    build(tiny_config(tmp_path / "rebuilt", videos=videos, audio=sounds, sound=cutting))
    rebuilt = SearchService(encoder, load_bundle(tmp_path / "rebuilt"), QueryLimits(max_k=50), audio=audio)

    def tracks(searched: SearchService) -> list[list[tuple[float, str, bool]]]:
        return [sorted((round(hit.score, 5), Path(hit.item.uri).name, is_sound_of_video(hit.item.extra))
                       for hit in searched.search_text(text, Modality.AUDIO, 20).hits)[::-1]
                for text in ("a dog barking", "someone speaking")]

    assert tracks(service) == tracks(rebuilt)
    assert sorted(name for _, name, of_video in tracks(service)[0] if of_video) == \
        ["new.mkv", "quiet.mp4", "renamed.mp4"]
    again = sync(bundle, live, encoder, SyncSources(videos=videos, audio=sounds), batch_size=8, progress=False,
                 audio=audio)
    # Four videos, three sound tracks, one sound file; talk.mp4, silent now, is read again and has no track.
    assert (again.added, again.updated, again.moved, again.removed, again.unchanged) == (0, 0, 0, 0, 8)
    for opened in (service, rebuilt):
        opened.close()


def test_syncing_sounds_into_a_bundle_built_without_them_is_refused_naming_audio(
        corpus: tuple[Path, Path, Path], encoder: ClipEncoder, tmp_path: Path) -> None:
    from clipsearch.errors import SourceError

    bundle, live, service = _open(corpus[0], encoder)
    with pytest.raises(SourceError, match="built without sounds") as refused:
        sync(bundle, live, encoder, SyncSources(audio=tmp_path), progress=False)
    assert refused.value.field == "audio"
    service.close()

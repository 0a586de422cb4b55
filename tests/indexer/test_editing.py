"""`indexer add` and `indexer delete`: scripts change a bundle through its live log, with the
server's checks, a bad argument is refused naming its flag, and a command that meets a
compaction runs again on the new bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch.modality import Modality
from clipsearch.store.bundle import Bundle, load_bundle
from clipsearch.store.collection import Collection
from clipsearch.store.compaction import compact
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem
from indexer.cli import main
from indexer.common import on_live_bundle
from tests.support.imagefiles import image_bytes, noise_image, save


@pytest.fixture()
def live_copy(bundle_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_path, tmp_path / "bundle"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def collection_of(path: Path) -> Collection:
    bundle = load_bundle(path)
    return Collection(bundle, LiveLog(path / LIVE_FILE, bundle.items, bundle.manifest.embedding_dim))


def test_added_texts_and_images_are_in_the_collection_and_a_key_replaces_its_item(
        live_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "add", "--bundle", str(live_copy), "--text", "a purple giraffe", "--text", "a zebra",
                       "--key", "notes/giraffe", "--key", "notes/zebra", "--metadata", '{"album": "zoo"}')
    assert code == 0
    giraffe, zebra = json.loads(out)["ids"]
    save(tmp_path / "okapi.png", image_bytes(noise_image(7)))
    code, out, _ = run(capsys, "add", "--bundle", str(live_copy), "--image", str(tmp_path / "okapi.png"),
                       "--caption", "an okapi")
    assert code == 0
    [okapi] = json.loads(out)["ids"]
    code, out, _ = run(capsys, "add", "--bundle", str(live_copy), "--text", "a striped zebra", "--key", "notes/zebra")
    assert json.loads(out)["ids"] == [zebra]

    collection = collection_of(live_copy)
    assert collection.item(giraffe).extra == {"album": "zoo"} and collection.item(zebra).text == "a striped zebra"
    assert collection.item(okapi).modality is Modality.IMAGE and collection.item(okapi).text == "an okapi"
    assert collection.file_path(okapi).parent.name == "live-images"


def test_items_are_deleted_by_id_by_key_and_by_filter(live_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    collection = collection_of(live_copy)
    texts = sorted(item.id for item in collection.bundle.items if item.modality is Modality.TEXT)
    first_image = min((item for item in collection.bundle.items if item.modality is Modality.IMAGE),
                      key=lambda item: item.id)
    code, out, _ = run(capsys, "delete", "--bundle", str(live_copy), "--ids", str(texts[0]), str(texts[1]), "999999")
    assert code == 0 and json.loads(out) == {"deleted": texts[:2]}  # an unknown id is skipped
    code, out, _ = run(capsys, "delete", "--bundle", str(live_copy), "--keys", first_image.uri, "--modality", "image")
    assert json.loads(out) == {"deleted": [first_image.id]}
    code, out, _ = run(capsys, "delete", "--bundle", str(live_copy), "--filter",
                       json.dumps({"key": "modality", "match": {"value": "text"}}))
    assert sorted(json.loads(out)["deleted"]) == texts[2:]
    assert collection_of(live_copy).count(Modality.TEXT, collection_of(live_copy).refresh()) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "--text", "x", "--metadata", "[1]"], "--metadata: must be a JSON object"),
    (["add", "--text", "x", "--metadata", "{bad"], "--metadata: not valid JSON"),
    (["add", "--image", "/nonexistent.png"], "--image[0]: cannot read /nonexistent.png"),
    (["add", "--text", "  "], "--text[0].text"),
    (["delete", "--filter", '{"key": "year", "range": {"above": 1}}'], "--filter.range.above: unknown bound"),
    (["delete", "--filter", "{bad"], "--filter: not valid JSON"),
])
def test_a_bad_argument_is_refused_naming_its_flag_and_changes_nothing(
        live_copy: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, argv[0], "--bundle", str(live_copy), *argv[1:])
    assert code == 2 and message in err, err
    assert not collection_of(live_copy).refresh().changes


def test_keys_and_captions_must_match_the_items_in_number(live_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["add", "--bundle", str(live_copy), "--text", "a", "--text", "b", "--key", "only-one"])
    assert "give one --key per item (2) or none, got 1" in capsys.readouterr().err


def test_a_command_that_meets_a_compaction_runs_again_on_the_new_bundle(
        live_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen_compactions: list[int] = []

    def work(bundle: Bundle, live: LiveLog) -> list[int]:
        seen_compactions.append(len(bundle.manifest.compactions))
        vector = np.ones(bundle.manifest.embedding_dim, np.float32) / np.sqrt(bundle.manifest.embedding_dim)
        if len(seen_compactions) == 1:  # another process compacts the bundle under this command
            live.write([NewItem("first", Modality.TEXT, "first", "one", {}, "h1", vector)])
            compact(live_copy)
        return live.write([NewItem("second", Modality.TEXT, "second", "two", {}, "h2", vector)])

    [written] = on_live_bundle(live_copy, None, work)
    assert seen_compactions == [0, 1]  # refused on the old bundle, written on the new one
    assert "compacted or rebuilt meanwhile; nothing was written; running again" in capsys.readouterr().err
    assert collection_of(live_copy).item(written).text == "two"


def test_a_sound_added_to_a_collection_built_with_sounds_is_cut_and_embedded_by_its_audio_model(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
    from clipsearch.ingest.build import build
    from tests.support.corpora import make_image_corpus, tiny_config
    from tests.support.sounds import TONES, three_parts, write_sound

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    three_parts(sounds / "three.wav")
    build(tiny_config(tmp_path / "with-sounds", audio=sounds, sound=AudioSampling(model=OFFLINE_AUDIO_MODEL)))
    new = write_sound(tmp_path / "new.flac", [(TONES[2], 12.0)], kind="flac")
    code, out, _ = run(capsys, "add", "--bundle", str(tmp_path / "with-sounds"), "--image", str(new))
    assert code == 0, out
    [added] = json.loads(out)["ids"]
    collection = collection_of(tmp_path / "with-sounds")
    assert collection.item(added).modality is Modality.AUDIO
    assert collection.segment_vectors(added)[1].shape == (2, 32)  # 12 s: 0–10 and 2–12
    build(tiny_config(tmp_path / "images-only", images=make_image_corpus(tmp_path / "images", 2)))
    code, _, err = run(capsys, "add", "--bundle", str(tmp_path / "images-only"), "--image", str(new))
    assert code == 2 and "built without sounds" in err

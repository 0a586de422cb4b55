from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.errors import SourceError
from clipsearch.ingest.sources import Columns, read_audio_source, read_image_source, read_text_source, read_video_source
from tests.support.corpora import write_manifest
from tests.support.imagefiles import image_bytes, noise_image, save
from tests.support.sounds import TONES, write_sound
from tests.support.videos import four_scenes


def test_a_folder_is_read_recursively_with_any_letter_case_and_sidecars(tmp_path: Path) -> None:
    save(tmp_path / "b.JPG", image_bytes(noise_image(1), "JPEG"))
    save(tmp_path / "a" / "c.webp", image_bytes(noise_image(2), "WEBP"))
    save(tmp_path / "notes.md", b"not an image")
    (tmp_path / "b.txt").write_text("  a red thing \n")
    (tmp_path / "b.json").write_text('{"author": "me"}')
    items = read_image_source(tmp_path)
    assert [Path(item.uri).name for item in items] == ["c.webp", "b.JPG"]
    assert items[1].text == "a red thing" and items[1].extra == {"author": "me"}
    assert items[0].text is None and items[0].extra == {}


def test_an_invalid_sidecar_json_marks_its_image_as_a_problem(tmp_path: Path) -> None:
    save(tmp_path / "x.png", image_bytes(noise_image(1)))
    (tmp_path / "x.json").write_text("{not json")
    [item] = read_image_source(tmp_path)
    assert item.problem is not None and "x.json" in item.problem


def test_a_symlink_out_of_the_corpus_folder_is_not_followed(tmp_path: Path) -> None:
    outside = save(tmp_path / "outside" / "secret.png", image_bytes(noise_image(1)))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "link.png").symlink_to(outside)
    [item] = read_image_source(tmp_path / "corpus")
    assert item.problem is not None and "leaves the corpus" in item.problem


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifests_resolve_relative_paths_and_keep_extra_columns(tmp_path: Path, kind: str) -> None:
    save(tmp_path / "pics" / "one.png", image_bytes(noise_image(1)))
    rows: list[dict[str, object]] = [
        {"image": "pics/one.png", "caption": "first", "license": "cc0"},
        {"image": "pics/missing.png", "caption": "gone", "license": "cc0"},
    ]
    items = read_image_source(write_manifest(tmp_path, kind, rows))
    assert items[0].path == (tmp_path / "pics" / "one.png").resolve()
    assert items[0].text == "first" and items[0].extra == {"license": "cc0"} and items[0].problem is None
    assert items[1].problem == "file not found"


def test_manifest_column_names_are_configurable(tmp_path: Path) -> None:
    save(tmp_path / "one.png", image_bytes(noise_image(1)))
    manifest = write_manifest(tmp_path, "jsonl", [{"file": "one.png", "alt": "x"}])
    [item] = read_image_source(manifest, Columns(image="file", caption="alt"))
    assert item.text == "x"


def test_a_manifest_without_the_image_column_is_refused_naming_the_column(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "csv", [{"path": "a.png"}])
    with pytest.raises(SourceError, match="'image'"):
        read_image_source(manifest)


def test_a_text_file_gives_one_item_per_non_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("first\n\n  second  \n")
    assert [item.text for item in read_text_source(path)] == ["first", "second"]


def test_jsonl_texts_keep_extra_fields_and_report_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "hello", "lang": "en"}\nnot json\n{"text": ""}\n')
    items = read_text_source(path)
    assert items[0].text == "hello" and items[0].extra == {"lang": "en"}
    assert items[1].problem is not None and "invalid JSON" in items[1].problem
    assert items[2].problem is not None and "empty" in items[2].problem


def test_csv_texts_use_the_text_column(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    path.write_text("id,body\n1,hello there\n")
    [item] = read_text_source(path, Columns(text="body"))
    assert item.text == "hello there" and item.extra == {"id": "1"}


def test_missing_sources_are_refused_naming_which_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no folder or file") as images:
        read_image_source(tmp_path / "nope")
    with pytest.raises(SourceError, match="no file") as texts:
        read_text_source(tmp_path / "nope.txt")
    assert (images.value.field, texts.value.field) == ("images", "texts")


def test_a_media_folder_tells_videos_from_sounds_by_content_whatever_their_container(tmp_path: Path) -> None:
    """WebM and MP4 hold videos and sounds alike: a sound-only WebM (a browser's recording) or M4A is a
    sound, a WebM with pictures a video; names never decide."""
    pytest.importorskip("av")
    folder = tmp_path / "media"
    folder.mkdir()
    write_sound(folder / "recorded.webm", [(TONES[1], 1.0)], kind="webm")
    write_sound(folder / "memo.m4a", [(TONES[2], 1.0)], kind="m4a")
    four_scenes(folder / "scenes.webm", codec="libvpx-vp9", container="webm")
    four_scenes(folder / "named-like-a-sound.ogg", container="mp4")  # an MP4 inside
    assert sorted(Path(item.uri).name for item in read_audio_source(folder)) == ["memo.m4a", "recorded.webm"]
    assert sorted(Path(item.uri).name for item in read_video_source(folder)) == ["named-like-a-sound.ogg",
                                                                                 "scenes.webm"]

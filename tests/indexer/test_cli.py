from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipsearch.config import DEFAULT_PRETRAINED
from clipsearch.store.bundle import load_bundle
from indexer.building import config_from_args
from indexer.cli import main, parse_args
from tests.support.corpora import write_manifest
from tests.support.imagefiles import image_bytes, noise_image, save
from tests.support.small_disk import SmallDisk

TINY = ["--model", "tiny", "--device", "cpu", "--workers", "0", "--no-progress"]


def test_every_flag_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["build", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--images", "--texts", "--out", "--model", "--pretrained", "--checkpoint", "--batch-size",
                 "--device", "--workers", "--index-factory"):
        assert flag in help_text


def test_the_default_model_uses_its_pretrained_weights_and_other_models_none() -> None:
    assert config_from_args(parse_args(["build", "--images", "x", "--out", "b"])).pretrained == DEFAULT_PRETRAINED
    assert config_from_args(parse_args(["build", "--images", "x", "--out", "b", "--model", "tiny"])).pretrained is None
    assert config_from_args(parse_args(["build", "--texts", "t", "--out", "b", "--pretrained", "none"])).pretrained \
        is None


def test_videos_sound_tracks_are_indexed_with_sound_files_or_when_asked_and_never_when_refused() -> None:
    def video_sound(*flags: str) -> bool:
        return config_from_args(parse_args(["build", "--videos", "v", "--out", "b", *flags])).indexes_video_sound

    assert not video_sound() and video_sound("--audio", "s") and video_sound("--video-sound")
    assert not video_sound("--audio", "s", "--no-video-sound")


@pytest.mark.parametrize("arguments", [
    ["build", "--out", "b"],
    ["build", "--images", "x", "--out", "b", "--batch-size", "0"],
    ["build", "--images", "x", "--out", "b", "--checkpoint", "w.pt", "--pretrained", "openai"],
    ["build", "--images", "x", "--out", "b", "--video-sound"],
])
def test_unusable_arguments_stop_with_a_usage_error(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(arguments)
    assert stopped.value.code == 2


def test_a_collection_names_its_bundle_in_the_data_folder_and_a_wrong_one_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["build", "--texts", "t", "--collection", "notes", "--data-dir", "/srv/c"]).out == \
        Path("/srv/c/notes")
    monkeypatch.setenv("CLIPSEARCH_DATA_DIR", "/srv/from-env")
    assert parse_args(["sync", "--texts", "t", "--collection", "notes"]).bundle == Path("/srv/from-env/notes")
    assert parse_args(["rollback", "--collection", "notes"]).bundle == Path("/srv/from-env/notes")
    monkeypatch.delenv("CLIPSEARCH_DATA_DIR")
    for arguments, said in ((["build", "--texts", "t"], "give --out or --collection"),
                            (["build", "--texts", "t", "--out", "b", "--collection", "c", "--data-dir", "d"],
                             "not both"),
                            (["build", "--texts", "t", "--collection", "notes"], "--collection needs --data-dir"),
                            (["sync", "--texts", "t", "--collection", ".hidden", "--data-dir", "d"],
                             "--collection: '.hidden' is not a collection name"),
                            (["reindex", "--bundle", "b"], "--model: name the model")):
        with pytest.raises(SystemExit) as stopped:
            parse_args(arguments)
        assert stopped.value.code == 2 and said in capsys.readouterr().err


def test_a_folder_and_a_text_file_build_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for number in range(5):
        save(tmp_path / "images" / f"{number}.png", image_bytes(noise_image(number)))
    save(tmp_path / "images" / "broken.jpg", b"\xff\xd8\xff garbage")
    (tmp_path / "texts.txt").write_text("one\ntwo\n")
    code = main(["build", "--images", str(tmp_path / "images"), "--texts", str(tmp_path / "texts.txt"),
                 "--out", str(tmp_path / "bundle"), *TINY])
    output = capsys.readouterr().out
    assert code == 0
    assert "indexed 5 images, 2 texts; skipped 1" in output and "items/s" in output
    assert "broken.jpg" in output
    assert load_bundle(tmp_path / "bundle").manifest.modalities.keys() == {"image", "text"}


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_each_manifest_format_builds_end_to_end(tmp_path: Path, kind: str) -> None:
    rows: list[dict[str, object]] = []
    for number in range(4):
        save(tmp_path / "files" / f"{number}.jpg", image_bytes(noise_image(number), "JPEG"))
        rows.append({"image": f"files/{number}.jpg", "caption": f"photo {number}", "source": "test"})
    manifest = write_manifest(tmp_path, kind, rows)
    assert main(["build", "--images", str(manifest), "--out", str(tmp_path / "bundle"), *TINY]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert sorted(item.text or "" for item in bundle.items) == [f"photo {number}" for number in range(4)]
    assert all(item.extra == {"source": "test"} for item in bundle.items)


def test_a_missing_corpus_fails_with_a_message_not_a_traceback(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "b"), *TINY]) == 2
    assert "--images: no folder or file" in capsys.readouterr().err


def test_python_dash_m_indexer_runs_with_a_progress_bar(tmp_path: Path) -> None:
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": f"t{n}"}) + "\n" for n in range(3)))
    finished = subprocess.run([sys.executable, "-m", "indexer", "build", "--texts", str(tmp_path / "texts.jsonl"),
                               "--out", str(tmp_path / "bundle"), "--model", "tiny", "--device", "cpu"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert finished.returncode == 0, finished.stderr
    assert "text/s" in finished.stderr and "indexed 3 texts" in finished.stdout


def test_if_changed_skips_an_up_to_date_bundle_and_rebuilds_after_a_change(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "texts.txt").write_text("one\ntwo\n")
    arguments = ["build", "--texts", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "bundle"), "--if-changed",
                 *TINY]
    assert main(arguments) == 0 and "indexed 2 texts" in capsys.readouterr().out
    assert main(arguments) == 0 and "up to date" in capsys.readouterr().out
    (tmp_path / "texts.txt").write_text("one\ntwo\nthree\n")
    assert main(arguments) == 0 and "indexed 3 texts" in capsys.readouterr().out


def test_classify_stores_each_images_best_label_and_keeps_the_bundle_loadable(bundle_path: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]
                                                                              ) -> None:
    copy = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    assert main(["classify", "--bundle", str(copy), "--labels", "cat, dog,boat", "--device", "cpu",
                 "--backend", "torch", "--no-progress"]) == 0
    bundle = load_bundle(copy)
    images = sum(item.modality.value == "image" for item in bundle.items)
    assert f"labelled {images} images" in capsys.readouterr().out
    try:
        for item in bundle.items:
            if item.modality.value == "image":
                assert item.extra["label"] in {"cat", "dog", "boat"} and 0 < item.extra["label_score"] <= 1
            else:
                assert "label" not in item.extra
    finally:
        bundle.close()
    assert main(["classify", "--bundle", str(copy), "--labels", "cat,dog", "--multi-label", "--threshold", "0",
                 "--field", "tags", "--backend", "torch", "--no-progress"]) == 0
    bundle = load_bundle(copy)
    try:
        image = next(item for item in bundle.items if item.modality.value == "image")
        assert sorted(image.extra["tags"]) == ["cat", "dog"] and set(image.extra["tags_scores"]) == {"cat", "dog"}
        assert "label" in image.extra, "other fields are kept"
    finally:
        bundle.close()


def test_classify_refuses_repeated_labels_before_loading_a_model(bundle_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--bundle", str(bundle_path), "--labels", "cat,Cat", "--no-progress"]) == 2
    assert "--labels[1]: repeats labels[0]" in capsys.readouterr().err


def test_a_build_on_a_full_disk_stops_with_a_message_naming_the_path_and_the_free_space(
        corpus_dir: Path, disk: SmallDisk, capsys: pytest.CaptureFixture[str]) -> None:
    disk.fill()
    out = disk.path / "bundle"
    code = main(["build", "--images", str(corpus_dir / "images"), "--out", str(out), *TINY])
    errors = capsys.readouterr().err
    assert code == 2
    assert f"error: no space left for the build at {out}: 0 B free of 16.0 MiB on the filesystem at {disk.path}" \
        in errors
    assert "Traceback" not in errors
    assert not out.exists()

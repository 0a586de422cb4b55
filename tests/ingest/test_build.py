from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import ResumeMismatch, StorageFull
from clipsearch.ingest.build import build
from clipsearch.ingest.shards import work_dir_for
from clipsearch.modality import Modality
from clipsearch.store.bundle import REPORT_FILE, Bundle, load_bundle
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config
from tests.support.imagefiles import (
    BAD_FILES,
    DUPLICATE_FILES,
    GOOD_FILES,
    good_and_bad_files,
    image_bytes,
    noise_image,
)
from tests.support.reference import bundle_contents
from tests.support.small_disk import FILLER, SmallDisk


def test_every_good_file_is_indexed_and_every_bad_one_reported(tmp_path: Path) -> None:
    good_and_bad_files(tmp_path / "mixed")
    summary = build(tiny_config(tmp_path / "bundle", images=tmp_path / "mixed"))
    bundle = load_bundle(tmp_path / "bundle")
    indexed = {Path(item.uri).name for item in bundle.items}
    report = json.loads((tmp_path / "bundle" / REPORT_FILE).read_text())
    assert indexed == GOOD_FILES
    assert {Path(entry["uri"]).name for entry in report["skipped"]} == BAD_FILES
    assert all(entry["reason"] for entry in report["skipped"])
    assert {Path(entry["uri"]).name for entry in report["duplicates"]} == DUPLICATE_FILES
    assert summary.skipped == len(BAD_FILES) and summary.duplicates == 1


def test_duplicates_can_be_kept(tmp_path: Path) -> None:
    good_and_bad_files(tmp_path / "mixed")
    summary = build(tiny_config(tmp_path / "bundle", images=tmp_path / "mixed", keep_duplicates=True))
    assert summary.indexed == {"image": len(GOOD_FILES) + 1} and summary.duplicates == 0


def test_decoding_in_worker_processes_gives_the_same_bundle(corpus_dir: Path, bundle: Bundle, tmp_path: Path) -> None:
    build(tiny_config(tmp_path / "parallel", images=corpus_dir / "images", texts=corpus_dir / "texts.txt",
                      workers=2))
    assert bundle_contents(load_bundle(tmp_path / "parallel")) == bundle_contents(bundle)


def test_an_ivf_index_records_its_cross_modal_recall(tmp_path: Path) -> None:
    make_image_corpus(tmp_path / "images", 80)
    make_text_corpus(tmp_path / "texts.txt", 40)
    build(tiny_config(tmp_path / "bundle", images=tmp_path / "images", texts=tmp_path / "texts.txt",
                      index_factory="IVF4,Flat"))
    spec = load_bundle(tmp_path / "bundle").manifest.modalities[Modality.IMAGE].index
    assert spec.factory == "IVF4,Flat" and not spec.exact
    assert spec.recall_queries == "text (cross-modal)"
    assert spec.recall_at_10 is not None and spec.recall_at_10 >= 0.95


CRASHING_BUILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from clipsearch.ingest.build import build
    from tests.support.corpora import tiny_config

    images, texts, out, crash_after = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    written = []

    def crash(path):
        written.append(path)
        if len(written) == crash_after:
            os.kill(os.getpid(), signal.SIGKILL)

    build(tiny_config(out, images=images, texts=texts), on_shard_written=crash)
""")


@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_a_build_killed_midway_resumes_to_the_same_bundle(corpus_dir: Path, bundle: Bundle, tmp_path: Path,
                                                           crash_after: int) -> None:
    out = tmp_path / "bundle"
    arguments = [str(corpus_dir / "images"), str(corpus_dir / "texts.txt"), str(out), str(crash_after)]
    killed = subprocess.run([sys.executable, "-c", CRASHING_BUILD, *arguments], cwd=Path(__file__).resolve().parents[2],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert killed.returncode == -9
    assert not out.exists()
    shards = sorted((work_dir_for(out) / "shards").iterdir())
    assert len(shards) == crash_after
    (shards[-1].with_name("text-999999.npz.tmp")).write_bytes(b"half a shard")  # debris of a killed write
    summary = build(tiny_config(out, images=corpus_dir / "images", texts=corpus_dir / "texts.txt"))
    assert summary.resumed_shards >= min(crash_after, 2)
    assert bundle_contents(load_bundle(out)) == bundle_contents(bundle)
    assert not work_dir_for(out).exists()


def test_resuming_with_other_arguments_is_refused_naming_them(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        build(tiny_config(out, images=corpus_dir / "images"),
              on_shard_written=lambda path: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(ResumeMismatch, match="batch_size"):
        build(tiny_config(out, images=corpus_dir / "images", batch_size=4))


def test_image_and_text_ids_never_collide(bundle: Bundle) -> None:
    image_ids = {item.id for item in bundle.items if item.modality is Modality.IMAGE}
    text_ids = {item.id for item in bundle.items if item.modality is Modality.TEXT}
    assert image_ids.isdisjoint(text_ids)
    assert np.array_equal(sorted(image_ids | text_ids), np.arange(55))


def test_resuming_after_a_corpus_file_changed_is_refused(tmp_path: Path) -> None:
    images = make_image_corpus(tmp_path / "images", 20)
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        build(tiny_config(out, images=images),
              on_shard_written=lambda path: (_ for _ in ()).throw(RuntimeError("stop")))
    changed = sorted(images.rglob("*.png"))[-1]
    changed.write_bytes(image_bytes(noise_image(12345)))  # same name, new content: old shards are stale
    with pytest.raises(ResumeMismatch, match="corpus"):
        build(tiny_config(out, images=images))


@pytest.mark.gpu
def test_a_gpu_build_with_pinned_workers_matches_the_cpu_bundle_within_fp16(corpus_dir: Path, bundle: Bundle,
                                                                           tmp_path: Path) -> None:
    build(tiny_config(tmp_path / "gpu", images=corpus_dir / "images", texts=corpus_dir / "texts.txt",
                      device="cuda", workers=2))
    gpu = load_bundle(tmp_path / "gpu")
    for modality in (Modality.IMAGE, Modality.TEXT):
        ids = sorted(item.id for item in bundle.items if item.modality is modality)
        assert ids == sorted(item.id for item in gpu.items if item.modality is modality)
        for item_id in ids:
            np.testing.assert_allclose(gpu.indices[modality].reconstruct(item_id),
                                       bundle.indices[modality].reconstruct(item_id), atol=1e-2)
    gpu.close()


def test_a_build_that_fills_the_disk_stops_naming_it_keeps_its_shards_and_a_rerun_resumes(
        corpus_dir: Path, bundle: Bundle, disk: SmallDisk) -> None:
    out = disk.path / "bundle"
    written: list[Path] = []

    def fill_after_two(path: Path) -> None:
        written.append(path)
        if len(written) == 2:
            disk.fill()

    with pytest.raises(StorageFull, match=f"no space left for the build at {out}: 0 B free of 16.0 MiB on the "
                                          f"filesystem at {disk.path}; no bundle was written, and the shards "
                                          "finished so far are kept: a rerun resumes from them"):
        build(tiny_config(out, images=corpus_dir / "images", texts=corpus_dir / "texts.txt"),
              on_shard_written=fill_after_two)
    assert not out.exists()
    assert sorted((work_dir_for(out) / "shards").iterdir()) == written  # the refused shard left nothing
    assert [entry.name for entry in disk.path.iterdir() if entry.name != FILLER] == [work_dir_for(out).name]

    disk.empty()
    summary = build(tiny_config(out, images=corpus_dir / "images", texts=corpus_dir / "texts.txt"))
    assert summary.resumed_shards == 2
    assert bundle_contents(load_bundle(out)) == bundle_contents(bundle)


def test_an_int8_build_is_calibrated_on_its_own_images_unless_told_otherwise(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    make_image_corpus(tmp_path / "images", 12)
    make_image_corpus(tmp_path / "elsewhere", 3, seed=1)
    for calibration, expected in ((None, tmp_path / "images"), (tmp_path / "elsewhere", tmp_path / "elsewhere")):
        config = tiny_config(tmp_path / "bundle", images=tmp_path / "images", backend="onnx-int8",
                             onnx_cache=tmp_path / "onnx", int8_calibration=calibration, discard_live_changes=True)
        assert config.calibration_folder == expected
        assert build(config).indexed == {"image": 12}
    calibrated_on = {json.loads(path.read_text())["calibration"]["folder"]
                     for path in (tmp_path / "onnx").glob("*-onnx-int8-*/export.json")}
    assert calibrated_on == {str(tmp_path / "images"), str(tmp_path / "elsewhere")}


def test_the_calibration_folder_of_a_build_from_a_manifest_must_be_named() -> None:
    manifest_build = tiny_config(Path("bundle"), images=Path("photos.csv"), backend="onnx-int8")
    assert manifest_build.calibration_folder is None  # load_encoder then refuses, naming int8_calibration


def test_a_video_is_one_item_whose_segments_are_the_rows_of_the_video_index(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from clipsearch.model.factory import load_encoder
    from clipsearch.store import segments
    from clipsearch.util.video import read_video
    from tests.support.videos import four_scenes

    videos = tmp_path / "videos"
    videos.mkdir()
    four_scenes(videos / "a.mp4")
    (videos / "copy.bin").write_bytes((videos / "a.mp4").read_bytes())  # the same video under another name
    (videos / "cut.mov").write_bytes((videos / "a.mp4").read_bytes()[:500])
    (videos / "notes.md").write_text("not a video")  # recognised by content: left out, not reported
    make_text_corpus(tmp_path / "texts.txt", 3)
    summary = build(tiny_config(tmp_path / "out", videos=videos, texts=tmp_path / "texts.txt"))
    assert summary.indexed == {"text": 3, "video": 1} and summary.duplicates == 1 and summary.skipped == 1
    assert "not a readable video" in summary.report["skipped"][0]["reason"]
    bundle = load_bundle(tmp_path / "out")
    try:
        (video,) = [item for item in bundle.items if item.modality is Modality.VIDEO]
        assert video.id == 3  # after the texts
        ids = np.sort(np.asarray(bundle.base_ids(Modality.VIDEO)))
        assert ids.tolist() == segments.segment_ids(video.id, 4).tolist()
        assert segments.spans_of(video.extra) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
        encoder = load_encoder("tiny", pretrained=None, device="cpu", backend="torch")
        expected = encoder.encode_images([segment.frame for segment in read_video(videos / "a.mp4").segments])
        np.testing.assert_allclose(bundle.base_vectors(Modality.VIDEO, ids), expected, atol=1e-5)
    finally:
        bundle.close()

"""Smoke tests of the benchmark scripts: each runs end to end at a tiny size on the CPU and prints its figures
as JSON lines. They check that the scripts work and report consistent numbers, not how fast anything is."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *arguments: str) -> dict[str, dict[str, Any]]:
    finished = subprocess.run([sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    # FAISS prints lines of its own to stdout about on-disk lists' files; the figures are JSON.
    figures = (json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{"))
    return {figure["figure"]: figure for figure in figures}


def test_smoke_the_search_bench_compares_with_faiss_and_finds_the_same_ids() -> None:
    figures = run_bench("bench.search", "--items", "3000", "--dim", "32", "--batches", "1", "16", "--repeats", "3",
                        "--min-seconds", "0", "--device", "cpu")
    assert figures["setup"]["baseline"] == "faiss IndexFlatIP (CPU)"
    search = figures["exact search"]  # the last batch size
    assert search["batch"] == 16 and search["same_id_sets"] == 1.0 and search["max_score_difference"] < 1e-5
    assert search["speedup"] == pytest.approx(search["baseline_ms"] / search["clipsearch_ms"], rel=1e-2)
    assert figures["memory read floor"]["ms"] > 0


def test_smoke_the_indexing_bench_indexes_every_generated_jpeg_and_relates_it_to_the_tower() -> None:
    arguments = ["--images", "40", "--model", "tiny", "--batch-size", "16", "--workers", "1", "--device", "cpu"]
    ray = importlib.util.find_spec("ray") is not None  # the [ray] extra: the same build on --engine ray
    figures = run_bench("bench.indexing", *arguments, *(["--ray"] if ray else []))
    assert figures["generated"]["images"] == 40
    end_to_end = figures["indexing end to end"]
    assert end_to_end["images"] == 40 and end_to_end["skipped"] == 0
    assert end_to_end["vs_tower"] > 0 and figures["image tower alone"]["images_per_s"] > 0
    if ray:
        on_ray = figures["indexing end to end on Ray"]
        assert on_ray["images"] == 40 and on_ray["vs_local"] > 0


def test_smoke_the_indexing_bench_with_videos_relates_decoding_and_indexing_them_to_the_image_path() -> None:
    pytest.importorskip("av")
    figures = run_bench("bench.indexing", "--images", "20", "--model", "tiny", "--batch-size", "16", "--workers", "1",
                        "--device", "cpu", "--videos", "2", "--video-seconds", "6", "--scene-seconds", "2",
                        "--width", "160", "--height", "120")
    assert figures["generated videos"]["videos"] == 2 and figures["generated videos"]["scenes_each"] == 3
    alone = figures["read + decode + cut videos alone"]
    assert alone["frames_per_s"] > 0 and alone["segments"] >= 6 and alone["frames_vs_image_loading"] > 0
    end_to_end = figures["video indexing end to end"]
    assert end_to_end["videos"] == 2 and end_to_end["skipped"] == 0 and end_to_end["segments_vs_images"] > 0
    assert end_to_end["video_seconds_per_s"] == pytest.approx(12 / end_to_end["seconds"], rel=0.01)


def test_smoke_the_sounds_bench_relates_indexing_sounds_and_videos_tracks_to_reading_and_the_tower() -> None:
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    figures = run_bench("bench.sounds", "--recordings", "2", "--seconds", "12", "--model", "tiny-clap",
                        "--batch-size", "4", "--workers", "1", "--device", "cpu", "--videos", "2",
                        "--video-seconds", "6", "--image-model", "tiny")
    assert figures["generated"]["recordings"] == 2
    assert figures["read + decode + resample alone"]["audio_seconds_per_s"] > 0
    tower = figures["audio tower alone"]
    assert tower["audio_seconds_per_s"] == pytest.approx(5 * tower["windows_per_s"], rel=0.01)
    end_to_end = figures["sound indexing end to end"]
    assert end_to_end["recordings"] == 2 and end_to_end["skipped"] == 0
    assert end_to_end["audio_seconds_per_s"] == pytest.approx(24 / end_to_end["seconds"], rel=0.01)
    tracks = figures["videos' sound tracks"]
    assert tracks["videos"] == 2 and tracks["tracks"] == 2
    assert tracks["with_tracks_s"] > 0 and tracks["pictures_only_s"] > 0  # the tiny models' difference is noise


def test_smoke_the_http_bench_measures_one_client_many_clients_and_the_unbatched_baseline() -> None:
    figures = run_bench("bench.http", "--items", "2000", "--texts", "100", "--model", "tiny", "--device", "cpu",
                        "--requests", "20", "--clients", "4", "--client-processes", "2", "--duration", "1",
                        "--compare-unbatched")
    for figure in ("health, one client", "text query, one client", "image upload, one client",
                   "text queries, 4 clients", "unbatched text queries, 4 clients"):
        assert figures[figure]["errors"] == 0 and figures[figure]["requests"] > 0, figure
    assert figures["text query, one client"]["vs_direct"] > 0
    assert figures["micro-batching effect"]["throughput_ratio"] > 0
    # The server's own CPU time per request: a text query costs it more than /health does.
    assert 0 < figures["health, one client"]["server_cpu_ms_per_request"] \
        < figures["text query, one client"]["server_cpu_ms_per_request"]
    assert figures["text queries, 4 clients"]["vs_health_cpu"] > 1


def test_smoke_the_http_bench_compares_server_variants_with_the_first() -> None:
    figures = run_bench("bench.http", "--items", "2000", "--texts", "100", "--model", "tiny", "--device", "cpu",
                        "--requests", "10", "--clients", "2", "--client-processes", "1", "--duration", "1",
                        "--variant", "before:backend=onnx,keep_torch_weights=true,text_trim=false,max_batch=1",
                        "--variant", "after:backend=onnx")
    before, after = figures["before server"], figures["after server"]
    assert before["text_trim"] is False and after["text_trim"] is True
    assert before["torch_weights"] is True and after["torch_weights"] is False
    assert before["settings"]["CLIPSEARCH_MAX_BATCH"] == "1"
    assert all(0 < figures[f"{name} server memory"]["rss_mb"] <= figures[f"{name} server memory"]["peak_rss_mb"]
               for name in ("before", "after"))
    comparison = figures["after against before"]
    assert comparison["one_client_text_p50_ratio"] > 0 and comparison["throughput_ratio"] > 0
    assert comparison["rss_ratio"] > 0


def test_smoke_a_short_bounded_load_has_no_errors_and_reports_the_servers_memory() -> None:
    # Four seconds measure the allocator settling as much as any leak, and this machine is shared: the
    # memory bound that matters is the bench's own 60 s run (docs/reliability.md). Here the figure must
    # be there and only a gross leak (the server doubling) fails.
    figures = run_bench("bench.load", "--clients", "8", "--duration", "4", "--warmup", "1", "--max-rss-growth", "1.0")
    load = figures["mixed search load"]
    assert load["errors"] == 0 and load["requests"] > 0 and load["p50_ms"] <= load["p99_ms"]
    assert figures["baseline /health"]["errors"] == 0
    memory = figures["server memory"]
    assert memory["limit"] == 1.0 and memory["rss_end_mb"] > 0 and memory["growth"] <= 1.0


def test_smoke_the_encode_bench_times_each_backend_against_pytorch_and_finds_the_same_vectors(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    figures = run_bench("bench.encode", "--model", "tiny", "--words", "3", "--batches", "2", "--repeats", "3",
                        "--min-seconds", "0", "--backends", "torch", "onnx", "onnx-int8", "--onnx-cache", str(tmp_path))
    assert figures["setup"]["trimmed"] is True
    assert figures["setup"]["backends"] == {"torch": "torch", "onnx": "onnx", "onnx-int8": "onnx-int8"}
    for tower in ("text", "image"):  # int8 against the fp32 export timed just before it
        quantised, fp32 = figures[f"{tower} tower, onnx-int8"], figures[f"{tower} tower, onnx"]
        assert quantised["vs_onnx"] == pytest.approx(fp32["ms"] / quantised["ms"], rel=1e-2)
        assert quantised["min_cosine"] > 0.98
    for backend in ("torch", "onnx"):
        text = figures[f"text tower, {backend}"]
        assert text["batch"] == 2 and text["tokens"] == 5 and text["min_cosine"] > 0.99999
        assert text["speedup"] == pytest.approx(text["full_context_ms"] / text["ms"], rel=1e-2)
        image = figures[f"image tower, {backend}"]
        assert image["batch"] == 2 and image["min_cosine"] > 0.99999
        assert image["speedup"] == pytest.approx(image["torch_ms"] / image["ms"], rel=1e-2)


def test_smoke_the_explain_bench_scores_both_patch_feature_methods_on_every_colour_pair() -> None:
    figures = run_bench("bench.explain", "--scenes", "150", "--epochs", "1", "--repeats", "2")
    assert figures["localisation"]["pairs"] == 15 and 0 <= figures["localisation"]["localised"] <= 15
    assert figures["cost"]["heatmap_ms"] > 0 and figures["cost"]["batch"] == 15


def test_smoke_the_demo_queries_bench_scores_all_ninety_queries_in_both_languages(tmp_path: Path) -> None:
    from indexer.shapes import write_shapes_corpus

    write_shapes_corpus(tmp_path, count=40, seed=1, language="both")
    figures = run_bench("bench.demo_queries", "--images", str(tmp_path / "images"), "--model", "tiny-multilingual")
    for language, example in (("en", "a red circle on the left"), ("zh", "左边的红色圆形")):
        figure = figures[f"demo queries, {language}"]
        assert figure["queries"] == 90 and figure["scenes"] == 40 and figure["example"] == example
        assert 0 <= figure["colour_shape_and_position"] <= figure["colour_and_shape"] <= 1
    assert 0 <= figures["demo queries across languages"]["shared_on_average"] <= 10


def test_smoke_the_encode_bench_times_a_chinese_query_on_a_multilingual_architecture_against_english() -> None:
    figures = run_bench("bench.encode", "--languages", "--presets", "xlm-roberta-base-ViT-B-32", "--repeats", "2",
                        "--min-seconds", "0")
    english, chinese = figures["one query, english"], figures["one query, chinese"]
    assert english["model"] == "ViT-B-32" and chinese["model"] == "xlm-roberta-base-ViT-B-32"
    assert chinese["tokens"] == 9, "<s>, seven characters, </s>"
    assert chinese["text_vs_english_on_default"] == pytest.approx(chinese["text_ms"] / english["text_ms"], rel=1e-2)
    assert chinese["parameters_m"] > 300


def test_smoke_the_filters_bench_finds_brute_forces_answer_on_every_path() -> None:
    finished = subprocess.run([sys.executable, "-m", "bench.filters", "--items", "4000", "--dim", "32", "--ivf",
                               "IVF16,Flat", "--shares", "0.5", "0.01", "--queries", "5", "--repeats", "3"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    searches = [line for line in map(json.loads, finished.stdout.splitlines()) if line["figure"] == "filtered search"]
    assert [(line["index"], line["path"]) for line in searches] == [
        ("exact", "mask"), ("ivf", "selector"), ("exact", "direct"), ("ivf", "direct")]
    assert [line["matching"] for line in searches] == [2000, 2000, 40, 40]
    assert all(line["recall_at_k"] == 1.0 for line in searches if line["index"] == "exact" or line["path"] == "direct")


def test_smoke_the_updates_bench_adds_searches_during_writes_and_deletes() -> None:
    figures = run_bench("bench.updates", "--base", "300", "--adds", "128", "--batch", "32", "--writers", "2",
                        "--searches", "10")
    assert figures["adds over HTTP"]["items"] == 128 and figures["adds over HTTP"]["items_per_s"] > 0
    assert figures["adds over HTTP"]["vs_build"] == pytest.approx(
        figures["adds over HTTP"]["items_per_s"] / figures["build"]["items_per_s"], rel=1e-2)
    during = figures["search latency during writes"]
    assert during["quiet_p50_ms"] > 0 and during["writing_p50_ms"] > 0
    assert figures["deletes over HTTP"]["items"] == 128


def test_smoke_the_compaction_bench_folds_every_change_and_times_searches_before_and_after() -> None:
    figures = run_bench("bench.compaction", "--items", "5000", "--dim", "32", "--adds", "300", "--deletes", "200",
                        "--repeats", "5")
    assert figures["live changes written"]["adds"] == 300 and figures["live changes written"]["deletes"] == 200
    compaction = figures["compaction"]
    assert compaction["folded"] == 300 + 200 and compaction["retrained"] == []
    during = figures["compaction during writes"]
    assert during["folded"] >= 50 * 10  # the timed writes before it, at least
    assert during["writes"] > 0 and during["write_max_ms"] >= during["write_p50_ms"] > 0
    assert during["writes_held_s"] <= during["write_s"]
    assert compaction["vs_written_from_vectors"] == pytest.approx(
        (compaction["prepare_s"] + compaction["write_s"]) / figures["written from vectors"]["seconds"], rel=2e-2)
    latency = figures["search latency"]
    assert latency["pending_p50_ms"] > 0 and latency["compacted_p50_ms"] > 0 and figures["reload"]["seconds"] > 0
    assert compaction["peak_resident_bytes"] > compaction["resident_after_imports_bytes"] > 0


def test_smoke_the_compaction_bench_folds_changes_into_an_on_disk_index() -> None:
    figures = run_bench("bench.compaction", "--items", "20000", "--dim", "32", "--adds", "300", "--deletes", "200",
                        "--repeats", "5", "--factory", "IVF32,PQ8", "--clusters", "64")
    assert figures["written from vectors"]["params"]["on_disk"]
    compaction = figures["compaction"]
    assert compaction["folded"] == 300 + 200 and compaction["retrained"] == []
    above_imports = compaction["peak_resident_bytes"] - compaction["resident_after_imports_bytes"]
    assert compaction["peak_above_imports_vs_index_bytes"] == pytest.approx(
        above_imports / figures["written from vectors"]["index_bytes"], rel=2e-2)
    assert figures["compaction during writes"]["writes"] > 0


def test_smoke_the_search_bench_times_keyword_hybrid_and_fused_search_against_vector_search() -> None:
    figures = run_bench("bench.search", "--items", "2000", "--dim", "32", "--batches", "1", "--repeats", "3",
                        "--min-seconds", "0", "--device", "cpu", "--hybrid")
    assert figures["keyword index build"]["items"] == 2000
    for name in ("keyword search", "hybrid search", "fused search"):
        assert figures[name]["vs_vector"] == pytest.approx(figures[name]["ms"] / figures[name]["vector_ms"], rel=1e-2)
    assert figures["keyword index build, chinese"]["items"] == figures["keyword index build, english"]["items"] == 2000
    for path in ("", ", trigram path"):
        for shape in ("three words", "one word"):
            chinese = figures[f"keyword search, chinese{path}, {shape}"]
            assert chinese["vs_english"] == pytest.approx(chinese["ms"] / chinese["english_ms"], rel=1e-2)


def test_smoke_the_fusion_bench_measures_every_configuration() -> None:
    figures = run_bench("bench.fusion", "--scenes", "30", "--validation", "20")
    assert figures["sets"]["test_images"] == 30 and figures["sets"]["test_queries"] == 90
    assert 0.1 <= figures["validation sweep"]["best_caption_weight"] <= 0.9
    last = figures["test text → image"]  # the last configuration: hybrid at the chosen vector weight
    assert last["configuration"].startswith("hybrid") and 0 <= last["R@1"] <= last["R@5"] <= last["R@10"] <= 1


def test_smoke_the_fusion_bench_measures_videos_by_their_best_shot_and_caption() -> None:
    pytest.importorskip("av")
    figures = run_bench("bench.fusion", "--scenes", "12", "--validation", "8", "--videos", "--captions", "colour")
    assert figures["sets"]["items"] == "videos" and figures["sets"]["test_queries"] == 36
    assert 12 <= figures["test videos"]["segments"] <= 24  # two shots each, one where they look alike
    last = figures["test text → video"]
    assert last["configuration"].startswith("hybrid") and 0 <= last["R@1"] <= last["R@5"] <= last["R@10"] <= 1


def test_smoke_the_scale_bench_builds_serves_and_extrapolates_an_on_disk_index(tmp_path: Path) -> None:
    by_name = run_bench("bench.scale", "--count", "20000", "--dim", "32", "--factory", "IVF16,PQ8", "--clusters", "64",
                        "--queries", "100", "--repeats", "5", "--work", str(tmp_path))
    assert by_name["bytes on disk"]["lists_per_vector"] == 8 + 8  # a PQ8 code and an id
    assert by_name["recall@10"]["with_rerank"] >= 0.95 > by_name["recall@10"]["without_rerank"]
    serving = by_name["serving"]
    assert serving["rss_anonymous_bytes"] > 0 and serving["on_disk_ms"] > 0 and serving["in_memory_ms"] > 0
    assert by_name["extrapolated"]["count"] == 10**9  # the last of 100M and 1B


def test_smoke_the_int8_recall_bench_scores_both_exports_on_the_same_pairs(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    subprocess.run([sys.executable, "-m", "indexer", "demo-data", "--kind", "shapes", "--language", "en", "--out",
                    str(tmp_path / "pairs"), "--count", "40", "--seed", "1"], cwd=ROOT, check=True, capture_output=True)
    figures = run_bench("bench.int8_recall", "--pairs", str(tmp_path / "pairs" / "images"), "--model", "tiny",
                        "--onnx-cache", str(tmp_path / "onnx"), "--dynamic")
    fp32 = figures["onnx retrieval"]
    for quantised, label in (("onnx-int8", "int8 against fp32"), ("onnx-int8-dynamic", "dynamic int8 against fp32")):
        int8 = figures[f"{quantised} retrieval"]
        assert fp32["images"] == int8["images"] == 40 and fp32["captions"] == int8["captions"] == 120
        loss = figures[label]
        for direction in ("text_to_image", "image_to_text"):
            assert loss[f"{direction}_loss"] == {
                k: pytest.approx(fp32[direction][k] - int8[direction][k], abs=1e-3) for k in fp32[direction]}
    assert figures["onnx-int8 retrieval"]["self_check_cosine"] > 0.98


def test_smoke_the_ocr_bench_reads_the_signs_and_finds_them_by_their_words_only_with_ocr() -> None:
    finished = subprocess.run([sys.executable, "-m", "bench.ocr", "--count", "2", "--settings", "default",
                               "detection_side=480", "--workers", "0"], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    reading = [line for line in lines if line["figure"] == "reading"]
    assert [(line["settings"], line["language"]) for line in reading] == [
        ("default", "en"), ("default", "zh"), ("detection_side=480", "en"), ("detection_side=480", "zh")]
    assert all(line["images"] == 2 and 0 <= line["separate_word_recall"] <= line["word_recall"] <= 1
               for line in reading)
    says = {(line["ocr"], json.dumps(line["fusion"]), line["mode"], line["language"]): line
            for line in lines if line["figure"] == "says"}
    assert len(says) == 18
    fused = [key for key in says if key[1] != "null"]  # the fused build: at its weights and the read text's alone
    assert sorted({(key[1], key[2]) for key in fused}) == [
        ('{"image": 0.0, "ocr": 1.0}', "vector"), ('{"image": 0.5, "ocr": 0.5}', "hybrid"),
        ('{"image": 0.5, "ocr": 0.5}', "vector")]
    says = {(ocr, mode, language): line for (ocr, fusion, mode, language), line in says.items() if fusion == "null"}
    for language in ("en", "zh"):
        assert says[(True, "keyword", language)]["r_at_1"] == 1.0
        assert says[(False, "keyword", language)]["r_at_5"] == 0.0  # without OCR, no words to find
    builds = [line for line in lines if line["figure"] == "build"]
    [cost] = [line for line in lines if line["figure"] == "ocr_cost"]
    assert cost["images_per_s_ratio"] == pytest.approx(builds[1]["images_per_s"] / builds[0]["images_per_s"],
                                                       rel=1e-2)


def test_smoke_the_ask_bench_answers_alone_batched_and_for_a_page_of_results() -> None:
    figures = run_bench("bench.ask", "--architectures", "tiny", "--questions", "6", "--clients", "3",
                        "--max-batch", "4")
    alone, batched = figures["tiny, one at a time"], figures["tiny, batched across requests"]
    assert alone["questions"] == batched["questions"] == 6 and alone["answers_per_s"] > 0
    assert batched["same_answers"] == 6 and 1 <= batched["mean_batch"] <= 4
    assert batched["speedup"] > 0 and figures["tiny, one search's results"]["results"] == 4


def test_smoke_the_cutoff_bench_counts_exactly_the_items_that_pass_and_times_a_snapshot() -> None:
    figures = run_bench("bench.cutoff", "--items", "3000", "--dim", "32", "--passing", "5", "50", "--adds", "40",
                        "--repeats", "3")
    cut = figures["cut-off"]  # the last of its lines; the bench fails if any counted other than `passing`
    assert cut["matched"] == cut["passing"] == 50
    assert cut["vs_top_k"] == pytest.approx(cut["p50_ms"] / figures["top-k"]["p50_ms"], rel=2e-2)
    snapshot = figures["snapshot"]
    assert snapshot["files"] >= 4 and 0 < snapshot["writes_held_ms"] <= snapshot["seconds"] * 1000
    assert snapshot["restore_s"] > 0


def test_smoke_the_reindex_bench_loses_no_write_and_compares_with_a_build() -> None:
    figures = run_bench("bench.reindex", "--images", "12", "--texts", "40", "--writes-per-s", "40", "--workers", "0")
    reindexed, writes = figures["reindex"], figures["writes during the reindex"]
    assert figures["build"]["items"] == 52 and reindexed["items"] >= 52 + 40  # the corpus and the writes before
    assert reindexed["vs_build"] == pytest.approx(reindexed["items_per_s"] / figures["build"]["items_per_s"],
                                                  rel=2e-2)
    assert writes["kept"] == writes["acknowledged"] > 40 and reindexed["writes_held_ms"] > 0

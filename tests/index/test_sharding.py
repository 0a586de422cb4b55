"""An exact index split across devices answers as one holding everything: tested with several
shards on the CPU (the merge is the same code on GPUs), and on two GPUs where there are two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.errors import ModelLoadError
from clipsearch.index.exact import ExactIndex
from clipsearch.index.fusion import Fusion, TextVectors, fused_rows
from clipsearch.index.searchers import ExactSearcher
from clipsearch.index.sharding import ShardedExactIndex, merge_top_k, parse_devices
from clipsearch.index.topk import TopK
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import Bundle
from clipsearch.store.filters import parse_filter
from tests.support.corpora import private_copy
from tests.support.reference import assert_same_top_k, brute_force, unit_vectors

CPU = torch.device("cpu")


def test_merging_top_k_lists_keeps_the_best_k_ties_by_id() -> None:
    first = TopK(np.array([[0.9, 0.5]], np.float32), np.array([[7, 3]]))
    second = TopK(np.array([[0.5, 0.4, 0.1]], np.float32), np.array([[2, 9, 4]]))
    merged = merge_top_k([first, second], 3)
    assert merged.ids.tolist() == [[7, 2, 3]] and merged.scores[0].tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert merge_top_k([first, TopK.empty(1)], 5).ids.tolist() == [[7, 3]]


@pytest.mark.parametrize("shards", [2, 3, 7])
@pytest.mark.parametrize("k", [1, 10, 200])
def test_several_shards_answer_as_one_index_holding_everything(shards: int, k: int) -> None:
    vectors, queries = unit_vectors(1000, 32, seed=1), unit_vectors(5, 32, seed=2)
    ids = np.random.default_rng(3).permutation(5000)[:1000].astype(np.int64)
    whole, split = ExactIndex(vectors, ids), ShardedExactIndex(vectors, ids, [CPU] * shards)
    expected, found = whole.search(queries, k), split.search(queries, k)
    assert found.ids.tolist() == expected.ids.tolist()
    assert found.scores == pytest.approx(expected.scores, abs=1e-6)
    assert split.row_ids.tolist() == ids.tolist() and np.array_equal(split.vectors(), vectors)


@pytest.mark.parametrize("allowed", [7, 90, 600])
def test_a_filter_over_shards_answers_as_over_one_index(allowed: int) -> None:
    vectors, queries = unit_vectors(1000, 32, seed=4), unit_vectors(3, 32, seed=5)
    ids = np.arange(1000, dtype=np.int64) * 3
    chosen = np.sort(np.random.default_rng(6).choice(ids, size=allowed, replace=False))
    whole, split = ExactIndex(vectors, ids), ShardedExactIndex(vectors, ids, [CPU] * 4)
    expected = whole.search(queries, 20, whole.subset(chosen))
    found = split.search(queries, 20, split.subset(chosen))
    assert found.ids.tolist() == expected.ids.tolist() and len(split.subset(chosen)) == allowed
    assert split.ids_of(split.subset(chosen)).tolist() == chosen.tolist()


def test_more_shards_than_rows_leaves_some_empty() -> None:
    vectors = unit_vectors(2, 8, seed=7)
    split = ShardedExactIndex(vectors, np.array([5, 6]), [CPU] * 3)
    assert sorted(split.search(vectors[:1], 5).ids[0].tolist()) == [5, 6]


def test_devices_are_parsed_and_an_invisible_gpu_is_named() -> None:
    assert parse_devices("", CPU) == [CPU] and parse_devices("all", CPU) == [CPU]
    assert parse_devices("cpu, cpu", CPU) == [CPU, CPU]
    with pytest.raises(ModelLoadError) as raised:
        parse_devices(f"cuda:{torch.cuda.device_count() + 3}", CPU)
    assert raised.value.field == "devices"


def test_a_search_service_over_three_shards_answers_as_over_one(encoder: ClipEncoder, bundle: Bundle) -> None:
    one = SearchService(encoder, bundle)
    three = SearchService(encoder, bundle, devices=[CPU] * 3)
    try:
        options = ResultOptions(filter=parse_filter({"key": "number", "range": {"lte": 15}}), dedup=0.9)
        for target in (Modality.IMAGE, Modality.TEXT):
            for kwargs in ({}, {"options": options} if target is Modality.IMAGE else {}):
                expected = one.search_text("a photo", target, 8, **kwargs)  # type: ignore[arg-type]
                found = three.search_text("a photo", target, 8, **kwargs)  # type: ignore[arg-type]
                assert [hit.item.id for hit in found.hits] == [hit.item.id for hit in expected.hits]
                assert found.matched == expected.matched
    finally:
        one.close()
        three.close()


def test_fused_rows_are_split_as_the_images_are(encoder: ClipEncoder, fused_bundle_path: Path, tmp_path: Path) -> None:
    with opened_service(encoder, private_copy(fused_bundle_path, tmp_path)) as one:
        three = SearchService(encoder, one.bundle, devices=[CPU] * 3)
        try:
            for fusion in (None, Fusion(0.2, 0.8)):
                options = ResultOptions(fusion=fusion, filter=parse_filter({"key": "number", "range": {"gte": 3}}))
                expected = one.search_text("caption of picture 9", Modality.IMAGE, 6, options=options)
                found = three.search_text("caption of picture 9", Modality.IMAGE, 6, options=options)
                assert [(hit.item.id, round(hit.score, 5)) for hit in found.hits] == \
                    [(hit.item.id, round(hit.score, 5)) for hit in expected.hits]
        finally:
            three.close()


@pytest.mark.gpu
def test_two_gpus_answer_as_one_in_fp16_with_rescoring() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    vectors, queries = unit_vectors(200_000, 64, seed=8), unit_vectors(16, 64, seed=9)
    ids = np.arange(200_000, dtype=np.int64)
    expected = ExactIndex(vectors, ids, "cpu").search(queries, 10)
    found = ShardedExactIndex(vectors, ids, [torch.device("cuda", 0), torch.device("cuda", 1)]).search(queries, 10)
    assert found.ids.tolist() == expected.ids.tolist()


def test_shards_scanned_in_fp16_as_on_gpus_answer_as_one_fp32_index_filtered_or_not() -> None:
    """The GPU path's tensor code (fp16 scan per shard, fp32 rescoring, merged top-k) run on CPU tensors."""
    vectors, queries = unit_vectors(3000, 64, seed=8), unit_vectors(8, 64, seed=9)
    ids = np.arange(3000, dtype=np.int64) * 2
    searcher = ExactSearcher(ShardedExactIndex(vectors, ids, [CPU, CPU, CPU], scan_dtype=torch.float16))
    assert searcher.index.shards[0].scan_dtype == torch.float16
    assert_same_top_k(brute_force(vectors, ids, queries, 10), searcher.search(queries, 10))
    for allowed_ids in (ids[::3], ids[:40]):  # a wide filter (masked scan) and a narrow one (gathered rows)
        keep = np.isin(ids, allowed_ids)
        assert_same_top_k(brute_force(vectors[keep], ids[keep], queries, 10),
                          searcher.search(queries, 10, searcher.allow(allowed_ids)))


def test_fused_rows_are_held_and_scanned_as_the_image_rows_are() -> None:
    """A fused bundle's rows [image | caption] (clipsearch.index.fusion) on sharded fp16 scans, as on GPUs."""
    images, captions = unit_vectors(900, 32, seed=1), unit_vectors(900, 32, seed=2)
    captioned = np.arange(900) % 3 == 0
    ids = np.arange(900, dtype=np.int64) + 7
    image_searcher = ExactSearcher(ShardedExactIndex(images, ids, [CPU, CPU], scan_dtype=torch.float16))
    rows = fused_rows(["caption"], images, {"caption": TextVectors(captions, captioned)})
    fused = image_searcher.like(rows)
    assert isinstance(fused.index, ShardedExactIndex) and fused.index.shards[1].scan_dtype == torch.float16
    queries = Fusion(0.7, 0.3).expand(unit_vectors(4, 32, seed=3))
    assert_same_top_k(brute_force(rows, ids, queries, 10), fused.search(queries, 10))
    allowed = ids[::5]
    keep = np.isin(ids, allowed)
    assert_same_top_k(brute_force(rows[keep], ids[keep], queries, 10),
                      fused.search(queries, 10, fused.allow(allowed)))

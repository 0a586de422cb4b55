"""Building an on-disk IVF-PQ index: which factories go on disk, every vector in the merged lists
once, nprobe and the re-rank depth tuned to the recall target, the indexer's path to it."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch.errors import IndexSettingsInvalid
from clipsearch.index import ondisk
from clipsearch.index.fusion import Fusion
from clipsearch.index.spec import DEFAULT_RERANK, RECALL_TARGET
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.shards import work_dir_for
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.store.bundle import load_bundle, on_disk_file_names
from tests.support.ondisk import (
    COUNT,
    DIM,
    Built,
    Closer,
    build_in,
    chunks_of,
    corpus,
    recall_at_10,
)
from tests.support.reference import brute_force


def test_ivf_indices_with_pq_codes_are_the_ones_built_on_disk() -> None:
    for factory in ("IVF65536,PQ64", "IVF1024,PQ32x8", "OPQ64,IVF4096,PQ64", "IVF4,PQ4x4"):
        assert ondisk.is_on_disk_factory(factory), factory
    for factory in ("Flat", "IVF1024,Flat", "PQ64", "IVF1024,PQ32x4fs", "HNSW32", "IVF256,SQ8"):
        assert not ondisk.is_on_disk_factory(factory), factory


def test_the_lists_on_disk_hold_every_vector_once_under_its_own_id(built: Built) -> None:
    ivf = faiss.extract_index_ivf(built.files.index)
    held = []
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size:
            held.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size).copy())
    assert np.array_equal(np.sort(np.concatenate(held)), built.ids)
    assert built.files.ivfdata.stat().st_size == COUNT * (ivf.code_size + 8)  # codes and ids, nothing else






def test_nprobe_is_the_smallest_power_of_two_that_reaches_the_recall_target_with_the_rerank(built: Built,
        request_close: Closer) -> None:
    params = built.spec.params
    assert params["on_disk"] and params["rerank"] == DEFAULT_RERANK and params["nlist"] == 32
    truth = brute_force(built.vectors, built.ids, built.queries, 10)
    store = ondisk.VectorStore(built.files.vectors, built.files.ids)
    request_close(store)
    index, ivf = built.files.index, faiss.extract_index_ivf(built.files.index)

    def recall(nprobe: int, rerank: int) -> float:
        ivf.nprobe = nprobe
        return recall_at_10(ondisk.search(index, store, built.queries, 10, rerank), truth)

    chosen = params["nprobe"]
    assert recall(chosen, DEFAULT_RERANK) == pytest.approx(built.spec.recall_at_10, abs=1e-4)
    assert built.spec.recall_at_10 >= RECALL_TARGET
    assert chosen == 1 or recall(chosen // 2, DEFAULT_RERANK) < RECALL_TARGET
    # The PQ codes alone rank far worse: what the re-rank is for.
    assert recall(chosen, 1) == pytest.approx(params["recall_without_rerank"], abs=1e-4)
    assert params["recall_without_rerank"] < built.spec.recall_at_10 - 0.1


def test_where_the_codes_limit_recall_the_rerank_takes_more_candidates_until_the_target_is_reached(
        built: Built, tmp_path: Path) -> None:
    # Two bytes a vector: more lists cannot make up for codes this coarse, more candidates can.
    files, spec = ondisk.build_on_disk(chunks_of(built.ids, built.vectors), COUNT, DIM, "IVF32,PQ2", tmp_path,
                                       "image", built.queries, "text")
    assert spec.params["rerank"] > DEFAULT_RERANK and spec.recall_at_10 >= RECALL_TARGET
    truth = brute_force(built.vectors, built.ids, built.queries, 10)
    with ondisk.VectorStore(files.vectors, files.ids) as store:
        found = ondisk.search(files.index, store, built.queries, 10, spec.params["rerank"] // 2)
    assert recall_at_10(found, truth) < RECALL_TARGET  # half as many candidates were not enough








def test_more_lists_than_vectors_are_refused_naming_the_factory(tmp_path: Path) -> None:
    ids, vectors, _ = corpus()
    with pytest.raises(IndexSettingsInvalid, match=r"IVF32,PQ8.*32 lists.*only 20 vectors"):
        build_in(tmp_path, ids[:20], vectors[:20], None)






def test_the_indexer_builds_an_on_disk_index_for_an_ivf_pq_factory(encoder: ClipEncoder, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"note {n}: {' '.join(['red', 'blue', 'green'][n % 3] for _ in range(n % 5 + 1))} "
                               f"shape {n % 17}" for n in range(600)))
    summary = build(BuildConfig(out=tmp_path / "bundle", texts=texts, model="tiny", pretrained=None, device="cpu",
                                backend="torch", index_factory="IVF4,PQ4x4", progress=False, workers=1,
                                batch_size=64, batches_per_shard=2))  # five shards, read one by one
    assert summary.indexed == {"text": 600}
    bundle = load_bundle(tmp_path / "bundle")
    try:
        record = bundle.manifest.modalities[Modality.TEXT]
        assert record.index.params["on_disk"] and record.index.recall_at_10 is not None
        assert set(on_disk_file_names(Modality.TEXT)) <= set(bundle.manifest.files)
        assert not work_dir_for(tmp_path / "bundle").exists() and len(bundle.base_ids(Modality.TEXT)) == 600
        lines = texts.read_text().splitlines()
        ids = np.array([item.id for item in bundle.items if item.text in (lines[0], lines[599])], np.int64)
        np.testing.assert_allclose(bundle.base_vectors(Modality.TEXT, ids),
                                   encoder.encode_texts([lines[0], lines[599]]), atol=2e-3)
    finally:
        bundle.close()
    with opened_service(encoder, tmp_path / "bundle") as service:
        hits = service.search_text("note 5: red", Modality.TEXT, 3).hits
        assert len(hits) == 3


def test_fusion_over_an_on_disk_image_index_is_refused_before_anything_is_embedded(
        corpus_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexSettingsInvalid, match="--fuse needs the image index in memory"):
        build(BuildConfig(out=tmp_path / "bundle", images=corpus_dir / "images", model="tiny", pretrained=None,
                          index_factory="IVF4,PQ8", fuse=Fusion.of({"image": 0.5, "caption": 0.5})))











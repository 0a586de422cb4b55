"""On-disk IVF-PQ indices (clipsearch.index.ondisk): built in fill shards and merged into one .ivfdata
file, nprobe tuned to the recall target with the re-rank, served read-only from the bundle's own
directory, resumed after a kill, searched with filters, deletes and live adds like any other,
and compacted: refilled without training, or trained again, streamed from the fp16 store.

The vectors are clustered with a modality gap (clipsearch.util.synthetic.ClusteredEmbeddings): uniform random
vectors say nothing about IVF recall."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsearch.config import CompactionPolicy, ModelRef
from clipsearch.errors import BundleError, IndexSettingsInvalid
from clipsearch.index import ondisk
from clipsearch.index.fusion import Fusion
from clipsearch.index.spec import DEFAULT_RERANK, RECALL_TARGET
from clipsearch.index.topk import TopK
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.shards import work_dir_for
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.query import QueryVector, ResultOptions
from clipsearch.store.bundle import ModalityContent, load_bundle, on_disk_file_names, write_bundle
from clipsearch.store.compaction import compact
from clipsearch.store.filters import parse_filter
from clipsearch.store.items import Item
from clipsearch.store.live import LIVE_FILE, LiveLog, NewItem, count_live_changes
from clipsearch.util.synthetic import ClusteredEmbeddings
from tests.support.reference import brute_force

DIM = 32  # the tiny model's, so that a search service can serve these bundles
COUNT = 12_000
FACTORY = "IVF32,PQ8"
FILL_SHARD = 5_000  # three fill shards, the last one short
Closer = Callable[["ondisk.VectorStore"], None]


@dataclass
class Built:
    ids: np.ndarray
    vectors: np.ndarray
    queries: np.ndarray
    files: ondisk.OnDiskFiles
    spec: ondisk.IndexSpec
    work: Path


def corpus() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = ClusteredEmbeddings(DIM, clusters=64, seed=3)
    ids = np.arange(COUNT, dtype=np.int64) * 3 + 7  # ids with gaps, as a deduplicated build has
    return ids, data.rows("image", 0, COUNT), data.rows("text", 0, 300)


def chunks_of(ids: np.ndarray, vectors: np.ndarray, size: int = 2_048) -> ondisk.Chunks:
    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return ((ids[start:start + size], vectors[start:start + size]) for start in range(0, len(ids), size))
    return chunks


def build_in(work: Path, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray | None,
             chunks: ondisk.Chunks | None = None) -> tuple[ondisk.OnDiskFiles, ondisk.IndexSpec]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ondisk, "FILL_SHARD_VECTORS", FILL_SHARD)
        return ondisk.build_on_disk(chunks or chunks_of(ids, vectors), len(ids), DIM, FACTORY, work, "image",
                                    queries, "text (cross-modal)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    ids, vectors, queries = corpus()
    work = tmp_path_factory.mktemp("ondisk")
    files, spec = build_in(work, ids, vectors, queries)
    return Built(ids, vectors, queries, files, spec, work)


@pytest.fixture()
def request_close() -> Iterator[Closer]:
    """Stores opened by a test, closed after it."""
    stores: list[ondisk.VectorStore] = []
    yield stores.append
    for store in stores:
        store.close()


def recall_at_10(found: TopK, truth: TopK) -> float:
    return sum(len(np.intersect1d(row, expected)) for row, expected in zip(found.ids, truth.ids, strict=True)) \
        / truth.ids.size


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


def test_the_store_holds_every_vector_at_half_precision_by_ascending_id(built: Built,
        request_close: Closer) -> None:
    store = ondisk.VectorStore(built.files.vectors, built.files.ids)
    request_close(store)
    assert np.array_equal(store.ids, built.ids)
    picked = built.ids[[5, 0, 9_999, 17]]
    np.testing.assert_allclose(store.vectors_of(picked), built.vectors[[5, 0, 9_999, 17]], atol=1e-3)
    assert store.vector(int(built.ids[0]) + 1) is None  # in a gap between ids
    with pytest.raises(KeyError):
        store.vectors_of(np.array([int(built.ids[-1]) + 1]))


def test_a_store_whose_vectors_do_not_match_its_ids_is_refused_naming_both_files(built: Built, tmp_path: Path) -> None:
    np.save(tmp_path / "image.vectors.npy", np.zeros((5, DIM), np.float16))
    with pytest.raises(BundleError, match=r"image.vectors.npy: holds \(5, 32\).*12000 ids of image.ids.npy"):
        ondisk.VectorStore(tmp_path / "image.vectors.npy", built.files.ids)


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


def test_the_rerank_orders_the_candidates_by_their_exact_scores(built: Built,
        request_close: Closer) -> None:
    store = ondisk.VectorStore(built.files.vectors, built.files.ids)
    request_close(store)
    index = built.files.index
    faiss.extract_index_ivf(index).nprobe = 4
    _, candidates = index.search(built.queries[:20], 50)
    for query, row in zip(built.queries[:20], candidates, strict=True):
        row = row[row >= 0]
        expected = brute_force(store.vectors_of(row), row, query, 5)
        found = ondisk.search(index, store, query[None], 5, 10)
        assert np.array_equal(found.ids[0], expected.ids[0])
        np.testing.assert_allclose(found.scores[0], expected.scores[0], atol=1e-5)


def test_a_build_killed_while_filling_its_lists_resumes_and_ends_with_the_same_index(
        built: Built, tmp_path: Path) -> None:
    ids, vectors, queries = built.ids, built.vectors, built.queries
    passes = 0

    def dying_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal passes
        passes += 1
        for number, chunk in enumerate(chunks_of(ids, vectors)()):
            if passes == 2 and number == 5:  # the fill pass, after two of its three shards are written
                raise KeyboardInterrupt
            yield chunk

    with pytest.raises(KeyboardInterrupt):
        build_in(tmp_path, ids, vectors, queries, dying_chunks)
    assert sorted(path.name for path in tmp_path.glob("fill-*")) == ["fill-00000.faiss", "fill-00001.faiss"]
    written = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("fill-*")}
    files, spec = build_in(tmp_path, ids, vectors, queries)
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("fill-0000[01]*")} == written  # kept
    assert spec == built.spec
    assert files.ivfdata.read_bytes() == built.files.ivfdata.read_bytes()


def test_other_settings_start_the_work_directory_afresh(built: Built, tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text(json.dumps({"factory": "IVF64,PQ8"}))
    (tmp_path / "fill-00000.faiss").write_bytes(b"from another build")
    files, _ = build_in(tmp_path, built.ids, built.vectors, built.queries)
    assert files.ivfdata.read_bytes() == built.files.ivfdata.read_bytes()


def test_more_lists_than_vectors_are_refused_naming_the_factory(tmp_path: Path) -> None:
    ids, vectors, _ = corpus()
    with pytest.raises(IndexSettingsInvalid, match=r"IVF32,PQ8.*32 lists.*only 20 vectors"):
        build_in(tmp_path, ids[:20], vectors[:20], None)


def write_on_disk_bundle(path: Path, work: Path) -> Path:
    """A bundle of COUNT image items whose index is on disk; item n has metadata {"n": n}."""
    ids, vectors, queries = corpus()
    files, spec = build_in(work, ids, vectors, queries)
    items = [Item(int(item_id), Modality.IMAGE, f"img/{item_id}", None, {"n": int(item_id)}, f"hash{item_id}")
             for item_id in ids]
    write_bundle(path, ModelRef("tiny", None), DIM, {Modality.IMAGE: ModalityContent(files.index, spec, files)},
                 items, {"skipped": []}, {})
    return path


@pytest.fixture(scope="module")
def on_disk_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("on-disk-bundle")
    return write_on_disk_bundle(folder / "bundle", folder / "work")


def test_a_bundle_keeps_its_lists_and_vectors_beside_the_index_and_serves_them_after_a_move(
        on_disk_bundle: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(on_disk_bundle, tmp_path / "elsewhere"))
    bundle = load_bundle(moved)
    try:
        assert set(on_disk_file_names(Modality.IMAGE)) <= set(bundle.manifest.files)
        inverted_lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(bundle.indices[Modality.IMAGE]).invlists)
        assert inverted_lists.filename == str(moved / "image.ivfdata") and inverted_lists.read_only
        ids, vectors, _ = corpus()
        assert np.array_equal(bundle.base_ids(Modality.IMAGE), ids)
        np.testing.assert_allclose(bundle.base_vectors(Modality.IMAGE, ids[:3]), vectors[:3], atol=1e-3)
    finally:
        bundle.close()


def test_live_adds_deletes_and_filters_work_on_an_on_disk_index(
        encoder: ClipEncoder, on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    ids, vectors, queries = corpus()
    with opened_service(encoder, path) as service:
        query = queries[0]
        first = [hit.item.id for hit in service.search(query, Modality.IMAGE, 10)]
        truth = brute_force(vectors, ids, query, 10).ids[0]
        assert len(set(first) & set(truth.tolist())) >= 8  # the build's recall, on one query

        service.collection.live.delete(first[:3])
        added = service.collection.live.write([NewItem("new", Modality.IMAGE, "img/new", None, {"n": 1_000_000},
                                                       "hash-new", query)])
        after = [hit.item.id for hit in service.search(query, Modality.IMAGE, 10)]
        assert after[0] == added[0]  # the query itself, added live, comes first
        assert not set(after) & set(first[:3])  # deleted base items are gone
        assert set(first[3:]) <= set(after)

        for bound in (400, 30_000):  # few allowed items: scored from the store; many: a selector in the lists
            options = ResultOptions(filter=parse_filter({"key": "n", "range": {"lt": bound}}))
            hits = service.search_vector(service.embed_text("anything"), Modality.IMAGE, 5, options).hits
            assert hits and all(hit.item.extra["n"] < bound for hit in hits)
        few = ResultOptions(filter=parse_filter({"key": "n", "range": {"lt": 400}}))
        allowed = ids[ids < 400]
        allowed = allowed[~np.isin(allowed, first[:3])]
        expected = brute_force(vectors[np.searchsorted(ids, allowed)], allowed, query, 5)
        found = service.search_vector(QueryVector(query), Modality.IMAGE, 5, few).hits
        assert [hit.item.id for hit in found] == expected.ids[0].tolist()  # exact: every allowed item scored


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


def change_on_disk_bundle(path: Path) -> dict[int, np.ndarray]:
    """Adds 40 items, replaces 5 base items by key and deletes 20 base items and 2 added ones; returns
    id → vector of every item left, base vectors as the fp16 store holds them."""
    ids, _, _ = corpus()
    data = ClusteredEmbeddings(DIM, clusters=64, seed=3)
    fresh = data.rows("image", COUNT, COUNT + 45)
    bundle = load_bundle(path)
    log = LiveLog(path / LIVE_FILE, bundle.items, DIM)
    try:
        expected = dict(zip(ids.tolist(), bundle.base_vectors(Modality.IMAGE, ids), strict=True))
        added = log.write([NewItem(f"new-{number}", Modality.IMAGE, f"img/new-{number}", None, {"n": -number},
                                   f"hash-new-{number}", fresh[number]) for number in range(40)])
        replaced = log.write([NewItem(f"img/{item_id}", Modality.IMAGE, f"img/{item_id}", None, {"n": 0},
                                      f"hash-again-{item_id}", fresh[40 + number])
                              for number, item_id in enumerate(ids[100:105].tolist())])
        assert replaced == ids[100:105].tolist()  # an upsert keeps its id
        deleted = ids[1_000:1_020].tolist() + added[:2]
        assert log.delete(deleted) == deleted
    finally:
        log.close()
        bundle.close()
    expected.update(zip(added, fresh[:40], strict=True))
    expected.update(zip(replaced, fresh[40:45], strict=True))
    for item_id in deleted:
        del expected[item_id]
    return expected


def centroids_of(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_a_compaction_refills_an_on_disk_index_with_its_live_items_without_training(
        on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    before = load_bundle(path)
    trained, params = centroids_of(before.indices[Modality.IMAGE]), before.manifest.modalities[Modality.IMAGE].index
    before.close()
    expected = change_on_disk_bundle(path)

    summary = compact(path)

    assert summary is not None and summary.retrained == [] and summary.counts == {"image": COUNT + 38 - 20}
    assert count_live_changes(path) == 0 and not list(tmp_path.glob(".bundle.*-*"))
    bundle = load_bundle(path)  # checksums verified
    try:
        index = bundle.indices[Modality.IMAGE]
        spec = bundle.manifest.modalities[Modality.IMAGE].index
        np.testing.assert_array_equal(centroids_of(index), trained)
        assert spec.params == {**params.params, "added_since_training": 38 + 5}  # live rows folded in
        assert spec.recall_at_10 == params.recall_at_10
        ids = np.array(sorted(expected))
        vectors = np.stack([expected[item_id] for item_id in ids])
        assert np.array_equal(bundle.base_ids(Modality.IMAGE), ids)
        np.testing.assert_allclose(bundle.base_vectors(Modality.IMAGE, ids), vectors, atol=1e-3)
        # The lists equal those of the trained index filled in memory with the same vectors (the
        # kept ones as the old store held them, the live ones as written), in the same order.
        reference = ondisk.emptied(on_disk_bundle / "image.faiss")
        reference.add_with_ids(vectors, ids)
        faiss.extract_index_ivf(reference).nprobe = faiss.extract_index_ivf(index).nprobe
        queries = ClusteredEmbeddings(DIM, clusters=64, seed=3).rows("text", 0, 20)
        found, wanted = index.search(queries, 30), reference.search(queries, 30)
        np.testing.assert_array_equal(found[1], wanted[1])
        np.testing.assert_allclose(found[0], wanted[0], rtol=1e-5)
    finally:
        bundle.close()


def test_an_on_disk_index_is_trained_and_tuned_again_once_the_rows_added_pass_the_stated_share(
        encoder: ClipEncoder, on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    before = load_bundle(path)
    trained = centroids_of(before.indices[Modality.IMAGE])
    before.close()
    expected = change_on_disk_bundle(path)

    summary = compact(path, CompactionPolicy(retrain_fraction=0.001))  # 45 rows added pass 0.1% of 12,000

    assert summary is not None and summary.retrained == ["image"]
    bundle = load_bundle(path)
    try:
        spec = bundle.manifest.modalities[Modality.IMAGE].index
        assert not np.array_equal(centroids_of(bundle.indices[Modality.IMAGE]), trained)
        assert spec.params["on_disk"] and "added_since_training" not in spec.params
        assert spec.params["trained_with"] == len(expected)
        assert spec.recall_at_10 is not None and spec.recall_at_10 >= RECALL_TARGET
        assert summary.recall_at_10 == {"image": spec.recall_at_10}
    finally:
        bundle.close()
    ids = np.array(sorted(expected))
    vectors = np.stack([expected[item_id] for item_id in ids])
    # The bundle holds no texts, so the index was tuned on image queries (the build had been given
    # text queries from outside the bundle): recall is checked on unseen images.
    assert spec.recall_queries == "same modality (no other corpus)"
    queries = ClusteredEmbeddings(DIM, clusters=64, seed=3).rows("image", COUNT + 45, COUNT + 95)
    with opened_service(encoder, path) as service:
        found = [[hit.item.id for hit in service.search(query, Modality.IMAGE, 10)] for query in queries]
    truth = brute_force(vectors, ids, queries, 10).ids
    # The tuning's queries are drawn from the index itself; unseen ones reach a little less (0.912).
    assert recall_at_10(TopK(np.zeros((50, 10), np.float32), np.array(found)), TopK(np.zeros_like(truth), truth)) \
        >= RECALL_TARGET - 0.1


KILLED_COMPACTION = """
import os, signal, sys
from pathlib import Path
from clipsearch.index import ondisk
from clipsearch.store.compaction import Compaction
filled = ondisk._fill
def fill_then_die(*args, **kwargs):
    filled(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the lists are written, not yet merged or swapped in
ondisk._fill = fill_then_die
Compaction(Path(sys.argv[1])).prepare()
"""


def test_a_compaction_of_an_on_disk_index_killed_half_way_leaves_the_bundle_and_its_log_as_they_were(
        on_disk_bundle: Path, tmp_path: Path) -> None:
    path = Path(shutil.copytree(on_disk_bundle, tmp_path / "bundle"))
    expected = change_on_disk_bundle(path)
    changes = count_live_changes(path)

    killed = subprocess.Popen([sys.executable, "-c", KILLED_COMPACTION, str(path)])

    assert killed.wait() == -signal.SIGKILL
    assert [debris.name for debris in tmp_path.glob(".bundle.*-*")] == [f".bundle.compacting.staging-{killed.pid}"]
    assert count_live_changes(path) == changes
    load_bundle(path).close()  # as it was: checksums verified
    summary = compact(path)  # the next one clears the dead one's work
    assert summary is not None and summary.counts == {"image": len(expected)}
    assert not list(tmp_path.glob(".bundle.*-*"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.integers(0, 40), kept_share=st.floats(0, 1), added=st.integers(0, 15),
       rows_at_once=st.integers(1, 9), seed=st.integers(0, 1000))
def test_a_pass_over_a_store_merged_with_live_rows_yields_every_row_once_in_ascending_id_order(
        tmp_path: Path, stored: int, kept_share: float, added: int, rows_at_once: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    every_id = rng.choice(1_000, size=stored + added, replace=False)  # the added ones fall anywhere among them
    stored_ids, added_ids = np.sort(every_id[:stored]), every_id[stored:]
    stored_vectors = rng.standard_normal((stored, 4)).astype(np.float16)
    added_vectors = rng.standard_normal((added, 4)).astype(np.float32)
    np.save(tmp_path / "v.npy", stored_vectors.reshape(stored, 4))
    np.save(tmp_path / "i.npy", stored_ids.astype(np.int64))
    keep = rng.random(stored) < kept_share
    with ondisk.VectorStore(tmp_path / "v.npy", tmp_path / "i.npy") as store:
        parts = list(ondisk.chunks_from_store(store, keep, added_ids, added_vectors, rows_at_once)())
    ids = np.concatenate([np.zeros(0, np.int64)] + [part_ids for part_ids, _ in parts])
    vectors = np.concatenate([np.zeros((0, 4), np.float32)] + [part_vectors for _, part_vectors in parts])
    expected = {**dict(zip(stored_ids[keep].tolist(), stored_vectors[keep].astype(np.float32), strict=True)),
                **dict(zip(added_ids.tolist(), added_vectors, strict=True))}
    assert ids.tolist() == sorted(expected)
    assert all(len(part_ids) for part_ids, _ in parts)  # no empty chunk
    for item_id, vector in zip(ids.tolist(), vectors, strict=True):
        np.testing.assert_array_equal(vector, expected[item_id])

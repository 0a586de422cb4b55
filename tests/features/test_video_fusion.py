"""Videos fused with their captions: a video searched by its best segment and its caption, against the
fused score worked by hand, w_image · max_s cos(q, segment s) + w_caption · cos(q, caption) (the
segments standing in for a missing caption), in a build, in live writes and edits, after a sync and
after a compaction, and under any sequence of them (a model-based test). Images' fusion:
tests/features/test_fusion.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from clipsearch.errors import InvalidQuery
from clipsearch.index import faiss_index
from clipsearch.index.fusion import Fusion
from clipsearch.ingest.build import build
from clipsearch.ingest.sync import SyncSources, sync
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.hybrid import Ranking, SearchMode
from clipsearch.search.open import close_service, open_service, opened_service
from clipsearch.search.query import GROUP_BY_SEGMENTS, QueryVector, ResultOptions, TextTerm
from clipsearch.search.service import SearchService
from clipsearch.search.writes import CollectionWriter, ImageEntry
from clipsearch.store import segments
from clipsearch.store.bundle import load_bundle
from clipsearch.store.collection import Collection
from clipsearch.store.compaction import compact
from clipsearch.store.filters import parse_filter
from clipsearch.util.video import read_video
from tests.support.corpora import make_image_corpus, private_copy, tiny_config
from tests.support.reference import assert_ranked_as
from tests.support.videos import SCENE_COLOURS, write_scenes

pytest.importorskip("av")

DEFAULT = Fusion(0.6, 0.4)
CAPTIONS = {"kite.mp4": "a red kite over a green field", "sea.mp4": "the blue sea at noon", "plain.mp4": None,
            "sunset.mp4": "a yellow sunset"}
QUERIES = ("a red kite", "the sea", "a sunset over the hills", "green")
MACHINE_CAPTIONS = (None, "a red kite", "snow at night")

VideoModel = dict[int, tuple[np.ndarray, np.ndarray | None]]
"""A test's own model of the videos: id → (its segments' vectors, its caption's vector or None)."""


def _write_videos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for number, (name, caption) in enumerate(CAPTIONS.items()):
        write_scenes(folder / name, [(SCENE_COLOURS[number], 1.0), (SCENE_COLOURS[(number + 2) % 6], 1.0)])
        if caption is not None:
            (folder / name).with_suffix(".txt").write_text(caption)
        (folder / name).with_suffix(".json").write_text(f'{{"album": "{"trip" if number % 2 else "home"}"}}')
    return folder


@pytest.fixture(scope="module")
def fused_videos_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four two-scene videos, three captioned, and six images, built with --fuse image=0.6,caption=0.4."""
    root = tmp_path_factory.mktemp("fused-videos")
    build(tiny_config(root / "bundle", videos=_write_videos(root / "videos"),
                      images=make_image_corpus(root / "images", 6), fuse=DEFAULT))
    return root / "bundle"


@pytest.fixture()
def service(encoder: ClipEncoder, fused_videos_path: Path, tmp_path: Path) -> Iterator[SearchService]:
    with opened_service(encoder, private_copy(fused_videos_path, tmp_path)) as opened:
        yield opened


def _model(collection: Collection, encoder: ClipEncoder) -> VideoModel:
    """Each video's segments' vectors as its index holds them (the video tower's, not fusion's), and its
    caption embedded here, never read back from the fused rows under test."""
    state = collection.refresh()
    made: VideoModel = {}
    if Modality.VIDEO in collection.bundle.indices:
        index = collection.bundle.indices[Modality.VIDEO]
        ids = faiss_index.ids_of(index)
        vectors = faiss_index.reconstruct_many(index, ids)
        owners = segments.items_of(ids)
        for item_id in np.unique(owners):
            if not state.is_removed(int(item_id)):
                made[int(item_id)] = (vectors[owners == item_id], None)
    for item_id, item in state.items.items():
        if item.modality is Modality.VIDEO:
            made[item_id] = (collection.segment_vectors(item_id, state)[1], None)
    captions = {item_id: text for item_id in made if (text := collection.item(item_id, state=state).text)}
    embedded = dict(zip(captions, encoder.encode_texts(list(captions.values())), strict=True)) if captions else {}
    return {item_id: (rows, embedded.get(item_id)) for item_id, (rows, _) in made.items()}


def _by_hand(model: VideoModel, query: np.ndarray, fusion: Fusion) -> dict[int, float]:
    """Every video's fused score: w_image · its best segment's cosine + w_caption · its caption's, the
    best segment's in the caption's place when it has none."""
    best = {item_id: float((rows @ query).max()) for item_id, (rows, _) in model.items()}
    return {item_id: fusion.image * best[item_id] + fusion.weight("caption") *
            (best[item_id] if caption is None else float(query @ caption))
            for item_id, (_, caption) in model.items()}


def _assert_scored_by_hand(service: SearchService, encoder: ClipEncoder, fusion: Fusion,
                           options: ResultOptions | None = None) -> None:
    model = _model(service.collection, encoder)
    for text in QUERIES:
        query = encoder.encode_texts([text])[0]
        hits = service.search_text(text, Modality.VIDEO, len(model), options=options or ResultOptions()).hits
        assert_ranked_as(hits, _by_hand(model, query, fusion), len(model))


def test_a_fused_build_stores_each_captioned_videos_caption_vector(fused_videos_path: Path,
                                                                   encoder: ClipEncoder) -> None:
    bundle = load_bundle(fused_videos_path)
    try:
        assert bundle.fused_modalities == {Modality.IMAGE, Modality.VIDEO}
        videos = [item for item in bundle.items if item.modality is Modality.VIDEO and item.text]
        held = bundle.texts["caption"]
        assert {item.text for item in videos} == {text for text in CAPTIONS.values() if text}
        assert set(faiss_index.ids_of(held).tolist()) >= {item.id for item in videos}
        stored = faiss_index.reconstruct_many(held, np.array([item.id for item in videos]))
        assert stored == pytest.approx(encoder.encode_texts([item.text or "" for item in videos]), abs=1e-5)
    finally:
        bundle.close()


@pytest.mark.parametrize("fusion", [DEFAULT, Fusion(0.2, 0.8), Fusion(1.0, 0.0)])
def test_a_text_search_scores_each_video_by_its_best_segment_and_its_caption(
        service: SearchService, encoder: ClipEncoder, fusion: Fusion) -> None:
    _assert_scored_by_hand(service, encoder, fusion, ResultOptions(fusion=None if fusion == DEFAULT else fusion))


def test_a_video_hit_says_what_its_best_segment_and_its_caption_add(service: SearchService,
                                                                     encoder: ClipEncoder) -> None:
    model = _model(service.collection, encoder)
    query = encoder.encode_texts(["a red kite"])[0]
    for hit in service.search_text("a red kite", Modality.VIDEO, 4).hits:
        rows, caption = model[hit.item.id]
        assert hit.segment is not None and hit.fused is not None
        assert sum(hit.fused.values()) == pytest.approx(hit.score, abs=1e-5)
        best = float(rows[hit.segment.position] @ query)
        assert best == pytest.approx(float((rows @ query).max()), abs=1e-5)  # the segment shown is the best one
        assert max(score for _, score in hit.moments) == pytest.approx(hit.score, abs=1e-5)  # its moments fused too
        if caption is None:
            assert hit.fused == pytest.approx({"image": best}, abs=1e-5)
        else:
            assert hit.fused == pytest.approx({"image": 0.6 * best, "caption": 0.4 * float(query @ caption)}, abs=1e-5)


def test_each_moment_of_a_fused_video_is_scored_with_its_videos_caption(service: SearchService,
                                                                          encoder: ClipEncoder) -> None:
    model = _model(service.collection, encoder)
    query = encoder.encode_texts(["the sea"])[0]
    hits = service.search_text("the sea", Modality.VIDEO, 8, options=ResultOptions(group_by=GROUP_BY_SEGMENTS)).hits
    assert len(hits) == 8  # four videos, two scenes each
    for hit in hits:
        rows, caption = model[hit.item.id]
        assert hit.segment is not None
        moment = float(rows[hit.segment.position] @ query)
        assert hit.score == pytest.approx(0.6 * moment + 0.4 * (moment if caption is None else float(query @ caption)),
                                          abs=1e-5)


def test_a_filtered_search_scores_the_matching_videos_by_hand(service: SearchService, encoder: ClipEncoder) -> None:
    model = _model(service.collection, encoder)
    trip = {item_id for item_id in model if service.collection.item(item_id).extra["album"] == "trip"}
    assert len(trip) == 2
    query = encoder.encode_texts(["the sea"])[0]
    hits = service.search_text("the sea", Modality.VIDEO, 4, options=ResultOptions(
        filter=parse_filter({"key": "album", "match": {"value": "trip"}}, "filter"))).hits
    assert_ranked_as(hits, {item_id: score for item_id, score in _by_hand(model, query, DEFAULT).items()
                            if item_id in trip}, 2)


def test_a_hybrid_search_of_videos_fuses_their_fused_vector_ranking_with_their_captions_words(
        service: SearchService, encoder: ClipEncoder) -> None:
    model = _model(service.collection, encoder)
    by_hand = _by_hand(model, encoder.encode_texts(["blue sea"])[0], DEFAULT)
    ranks = {item_id: rank for rank, item_id in enumerate(sorted(by_hand, key=lambda item_id: -by_hand[item_id]), 1)}
    answer = service.search_text("blue sea", Modality.VIDEO, 4, ranking=Ranking(SearchMode.HYBRID))
    [sea] = [hit for hit in answer.hits if hit.item.text == CAPTIONS["sea.mp4"]]
    assert sea.ranks is not None and sea.ranks["keyword"] == 1
    assert all(hit.ranks is not None and hit.ranks["vector"] == ranks[hit.item.id] for hit in answer.hits)


def test_a_composed_query_searches_the_fused_videos_in_a_stage_of_their_own(service: SearchService,
                                                                              encoder: ClipEncoder) -> None:
    model = _model(service.collection, encoder)
    query = service.embed_terms([TextTerm("a red kite"), TextTerm("the sea", 0.5)])
    composed = service.search_vector(query, Modality.VIDEO, 4)
    assert_ranked_as(composed.hits, _by_hand(model, query.vector, DEFAULT), 4)
    assert service.pipeline.batch_counts()["search-video+caption"] == (1, 1)
    shares = service.term_shares(query, composed.hits, DEFAULT)  # each term's part of the fused score
    assert shares.sum(axis=1) == pytest.approx([hit.score for hit in composed.hits], abs=1e-5)


def test_images_in_the_same_bundle_are_still_fused_with_their_captions(service: SearchService,
                                                                       encoder: ClipEncoder) -> None:
    hits = service.search_text("caption of picture 3", Modality.IMAGE, 6).hits
    captioned = [hit for hit in hits if hit.item.text]
    assert captioned and all(hit.fused is not None and set(hit.fused) == {"image", "caption"} for hit in captioned)


def test_a_written_video_is_fused_with_its_caption_and_its_edited_caption(service: SearchService,
                                                                            encoder: ClipEncoder,
                                                                            tmp_path: Path) -> None:
    writer = CollectionWriter(service)
    video = write_scenes(tmp_path / "new.mp4", [(SCENE_COLOURS[5], 1.0), (SCENE_COLOURS[1], 1.0)]).read_bytes()
    [video_id] = writer.add_images([ImageEntry(video, "new", "a yellow submarine")])
    assert service.collection.text_vectors(video_id)["caption"] == pytest.approx(
        encoder.encode_texts(["a yellow submarine"])[0], abs=1e-5)
    _assert_scored_by_hand(service, encoder, DEFAULT)

    writer.update(video_id, caption="a green tractor")
    assert service.collection.text_vectors(video_id)["caption"] == pytest.approx(
        encoder.encode_texts(["a green tractor"])[0], abs=1e-5)
    writer.update(video_id, metadata={"album": "farm"})  # the caption's vector stays
    assert service.collection.text_vectors(video_id)["caption"] == pytest.approx(
        encoder.encode_texts(["a green tractor"])[0], abs=1e-5)
    _assert_scored_by_hand(service, encoder, DEFAULT)


def test_a_compaction_keeps_live_and_built_videos_captions(encoder: ClipEncoder, fused_videos_path: Path,
                                                          tmp_path: Path) -> None:
    path = private_copy(fused_videos_path, tmp_path)
    with opened_service(encoder, path) as service:
        writer = CollectionWriter(service)
        video = write_scenes(tmp_path / "new.mp4", [(SCENE_COLOURS[4], 1.0)]).read_bytes()
        [new_id] = writer.add_images([ImageEntry(video, "new", "a purple door")])
        [sea] = [item.id for item in service.bundle.items if item.text == CAPTIONS["sea.mp4"]]
        writer.delete([sea])
    compact(path)
    with opened_service(encoder, path) as service:
        caption_ids = set(faiss_index.ids_of(service.bundle.texts["caption"]).tolist())
        assert new_id in caption_ids and sea not in caption_ids
        assert service.collection.text_vectors(new_id)["caption"] == pytest.approx(
            encoder.encode_texts(["a purple door"])[0], abs=1e-5)
        _assert_scored_by_hand(service, encoder, DEFAULT)


def test_a_sync_embeds_the_caption_of_a_recaptioned_video(encoder: ClipEncoder, tmp_path: Path) -> None:
    videos = _write_videos(tmp_path / "videos")
    build(tiny_config(tmp_path / "bundle", videos=videos, fuse=DEFAULT))  # videos alone may be fused
    (videos / "plain.txt").write_text("a plain grey wall")
    with opened_service(encoder, tmp_path / "bundle") as service:
        assert service.collection.live is not None
        summary = sync(service.bundle, service.collection.live, encoder, SyncSources(videos=videos), progress=False)
        assert summary.updated == 1
        [plain] = [item_id for item_id, item in service.collection.refresh().items.items()
                   if item.uri.endswith("plain.mp4")]
        assert service.collection.text_vectors(plain)["caption"] == pytest.approx(
            encoder.encode_texts(["a plain grey wall"])[0], abs=1e-5)
        _assert_scored_by_hand(service, encoder, DEFAULT)


def test_a_video_written_to_a_fused_bundle_of_images_alone_is_fused_too(encoder: ClipEncoder, fused_bundle_path: Path,
                                                                          tmp_path: Path) -> None:
    with opened_service(encoder, private_copy(fused_bundle_path, tmp_path)) as service:
        assert Modality.VIDEO not in service.bundle.indices
        video = write_scenes(tmp_path / "new.mp4", [(SCENE_COLOURS[2], 1.0), (SCENE_COLOURS[0], 1.0)]).read_bytes()
        CollectionWriter(service).add_images([ImageEntry(video, "one", "a red kite"),
                                              ImageEntry(video, "two", "the sea")])
        assert service.bundle.fusion == Fusion(0.7, 0.3)
        _assert_scored_by_hand(service, encoder, Fusion(0.7, 0.3))
        _assert_scored_by_hand(service, encoder, Fusion(0.2, 0.8), ResultOptions(fusion=Fusion(0.2, 0.8)))


def test_videos_over_an_approximate_index_are_searched_by_their_segments_alone(encoder: ClipEncoder,
                                                                                tmp_path: Path) -> None:
    build(tiny_config(tmp_path / "bundle", videos=_write_videos(tmp_path / "videos"), fuse=DEFAULT,
                      index_factory="IVF1,Flat"))
    with opened_service(encoder, tmp_path / "bundle") as service:
        assert not service.bundle.manifest.modalities[Modality.VIDEO].index.exact
        assert service.bundle.fused_modalities == {Modality.IMAGE}
        assert service.search_text("the sea", Modality.VIDEO, 4).hits[0].fused is None
        _assert_scored_by_hand(service, encoder, Fusion(1.0, 0.0))  # one list: the IVF answer is exact
        with pytest.raises(InvalidQuery, match="approximate.*Flat --index-factory") as refused:
            service.search_text("the sea", Modality.VIDEO, 4, options=ResultOptions(fusion=DEFAULT))
        assert refused.value.field == "fusion"


class FusedVideosMachine(RuleBasedStateMachine):
    """A fused collection's videos under adds (by key, so some replace), caption edits, deletes and
    compactions, beside `model`: id → (segments' vectors, caption's vector) of every video that should
    be live. Every video search must rank as the fused scores worked from the model."""

    encoder: ClipEncoder
    source: Path
    scratch: Path
    uploads: list[tuple[bytes, np.ndarray]]
    """Video files an add may write, each with its segments' vectors embedded here from its own frames."""

    def __init__(self) -> None:
        super().__init__()
        self.path = private_copy(self.source, Path(tempfile.mkdtemp(dir=self.scratch)))
        self.service = open_service(self.encoder, self.path)
        self.model = _model(self.service.collection, self.encoder)
        self.queries = self.encoder.encode_texts(["a red kite", "snow at night"])

    def _caption(self, caption: str | None) -> np.ndarray | None:
        return None if caption is None else self.encoder.encode_texts([caption])[0]

    @rule(pick=st.integers(0, 2), key=st.sampled_from(["a", "b", "c"]), caption=st.sampled_from(MACHINE_CAPTIONS))
    def add_video(self, pick: int, key: str, caption: str | None) -> None:
        data, segments_of_it = self.uploads[pick]
        [item_id] = CollectionWriter(self.service).add_images([ImageEntry(data, key, caption)])
        self.model[item_id] = (segments_of_it, self._caption(caption))

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 10_000), caption=st.sampled_from(MACHINE_CAPTIONS))
    def set_caption(self, pick: int, caption: str | None) -> None:
        item_id = sorted(self.model)[pick % len(self.model)]
        CollectionWriter(self.service).update(item_id, caption=caption)
        self.model[item_id] = (self.model[item_id][0], self._caption(caption))

    @precondition(lambda self: len(self.model) > 1)
    @rule(pick=st.integers(0, 10_000))
    def delete(self, pick: int) -> None:
        item_id = sorted(self.model)[pick % len(self.model)]
        assert CollectionWriter(self.service).delete([item_id]) == [item_id]
        del self.model[item_id]

    @rule()
    def compact(self) -> None:
        close_service(self.service)
        compact(self.path)
        self.service = open_service(self.encoder, self.path)

    @invariant()
    def video_searches_rank_by_the_fused_scores_of_the_live_videos(self) -> None:
        for fusion in (DEFAULT, Fusion(0.2, 0.8)):
            for query in self.queries:
                hits = self.service.search_vector(QueryVector(query), Modality.VIDEO, 10,
                                                  ResultOptions(fusion=fusion)).hits
                assert_ranked_as(hits, _by_hand(self.model, query, fusion), min(10, len(self.model)))

    def teardown(self) -> None:
        close_service(self.service)
        shutil.rmtree(self.path.parent, ignore_errors=True)


def test_fused_videos_stay_scored_by_hand_under_any_adds_edits_deletes_and_compactions(
        encoder: ClipEncoder, fused_videos_path: Path, tmp_path: Path) -> None:
    uploads = []
    for number in range(3):
        data = write_scenes(tmp_path / f"upload{number}.mp4", [(SCENE_COLOURS[number + 3], 1.0),
                                                                (SCENE_COLOURS[number], 0.5)]).read_bytes()
        uploads.append((data, encoder.encode_images([segment.frame for segment in read_video(data).segments])))
    FusedVideosMachine.encoder, FusedVideosMachine.source, FusedVideosMachine.scratch = \
        encoder, fused_videos_path, tmp_path
    FusedVideosMachine.uploads = uploads
    run_state_machine_as_test(FusedVideosMachine, settings=settings(
        max_examples=8, stateful_step_count=8, deadline=None, suppress_health_check=list(HealthCheck)))

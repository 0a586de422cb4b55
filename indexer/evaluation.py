"""`python -m indexer eval`: retrieval quality of a model, a bundle's model or a server, on image-caption pairs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from clipsearch.client import ClipSearchAPIError, ClipSearchClient
from clipsearch.config import DEFAULT_MODEL, ModelRef, QueryLimits
from clipsearch.errors import CheckpointRequired, ClipSearchError
from clipsearch.ingest.sources import Columns
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.quality.evaluate import (
    RECALL_AT,
    PairedCorpus,
    RetrievalScores,
    encoder_functions,
    evaluate,
    read_pairs,
    search_ranks,
    served_ranks,
)
from clipsearch.search.hybrid import FusionMethod, Ranking, SearchMode
from clipsearch.search.query import ResultOptions
from clipsearch.search.service import SearchService
from clipsearch.store.bundle import load_bundle
from clipsearch.store.live import LIVE_FILE, LiveLog
from clipsearch.store.manifest import check_model, read_manifest, record_evaluation
from indexer.common import (
    Commands,
    Fail,
    add_image_arguments,
    add_model_arguments,
    add_speed_arguments,
    check_weights,
    describe_error,
    fusion_weights,
    pretrained_of,
)


def add_parser(commands: Commands) -> None:
    command = commands.add_parser(
        "eval", help="retrieval quality (recall@1/5/10 both ways, mean rank) of a model on image-caption pairs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--pairs", type=Path, required=True,
                         help="a folder whose name.txt beside each image holds its captions, one per line, or a "
                              "CSV, JSONL or Parquet manifest with image and caption columns (one row per pair)")
    command.add_argument("--bundle", type=Path, default=None,
                         help="evaluate the model of this bundle, and record the figures in its manifest")
    command.add_argument("--through", metavar="URL", default=None,
                         help="also evaluate a running server over HTTP (its bundle built from the same --pairs "
                              "images, and their captions as texts for image → text), against its model's exact "
                              "figures")
    command.add_argument("--api-key", default=None, help="the server's API key (default: $CLIPSEARCH_API_KEY)")
    command.add_argument("--mode", choices=[mode.value for mode in SearchMode], default=SearchMode.VECTOR.value,
                         help="with --bundle or --through: also measure text → image as searches of that mode "
                              "rank the images (keyword and hybrid search the images' own captions)")
    command.add_argument("--hybrid-method", choices=[method.value for method in FusionMethod],
                         default=FusionMethod.RRF.value, help="how --mode hybrid fuses its two rankings")
    command.add_argument("--vector-weight", type=float, default=0.5,
                         help="--mode hybrid: the vector ranking's share, 0 to 1")
    command.add_argument("--fuse", type=fusion_weights, default=None,
                         help="with a bundle built with --fuse: weigh image, caption and ocr so (e.g. 'image=1' "
                              "for the image alone) in the searched figures")
    add_model_arguments(command, None)
    add_speed_arguments(command)
    add_image_arguments(command)
    command.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def check(args: argparse.Namespace, fail: Fail) -> None:
    check_weights(args, fail)
    if args.bundle is not None and args.through is not None:
        fail("give --bundle or --through, not both")
    if (args.bundle or args.through) is not None and (args.model is not None or args.pretrained is not None):
        fail("--bundle and --through name the model: leave out --model and --pretrained")
    if args.bundle is None and args.model is None:
        args.model = DEFAULT_MODEL


def run(args: argparse.Namespace) -> int:
    client = ClipSearchClient(args.through, timeout=120, api_key=args.api_key or
                              os.environ.get("CLIPSEARCH_API_KEY")) if args.through else None
    try:
        corpus = read_pairs(args.pairs, Columns(image=args.image_column, caption=args.caption_column))
        encoder = _encoder(args, client)
        scores, scored = evaluate(corpus, *encoder_functions(encoder, args.batch_size, args.workers, args.max_pixels,
                                                             progress=not args.no_progress), device=encoder.device)
        record: dict[str, Any] = {
            "model": encoder.ref.describe(), "backend": encoder.backend, "pairs": str(args.pairs),
            "skipped": len(scored.skipped), "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **scores.as_dict()}
        served = searched = None
        options = _search_options(args)
        if client is not None:
            served = _served_scores(scored, client, options, progress=not args.no_progress)
            record["through"] = {"url": args.through, "search": options, **served.as_dict(),
                                 "loss": _loss(scores, served)}
        if args.bundle is not None and (options or read_manifest(args.bundle).fusion is not None):
            searched = _bundle_search_scores(scored, args, encoder, options)
            record["search"] = {"options": options, **searched.as_dict()}
        if args.bundle is not None:
            record_evaluation(args.bundle, record)
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    except (ClipSearchAPIError, httpx.HTTPError) as error:  # the server refused, or could not be reached
        print(f"error: --through: {error}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(describe(record, scores, served, searched))
    for uri, reason in scored.skipped[:20]:
        print(f"  skipped {uri}: {reason}")
    if len(scored.skipped) > 20:
        print(f"  … and {len(scored.skipped) - 20} more")
    if args.bundle is not None:
        print(f"recorded in {args.bundle / 'manifest.json'}")
    return 0


def _encoder(args: argparse.Namespace, client: ClipSearchClient | None) -> ClipEncoder:
    """The model to evaluate: the bundle's, the server's, or the one the arguments name."""
    expected: ModelRef | None = None
    if args.bundle is not None:
        manifest = read_manifest(args.bundle)
        expected = manifest.model
    elif client is not None:
        info = client.info()
        expected = ModelRef(info["model"], info["pretrained"], info["checkpoint_sha256"])
    if expected is not None and expected.checkpoint_sha256 and args.checkpoint is None:
        raise CheckpointRequired("the model was loaded from a checkpoint file; give it with --checkpoint")
    model, pretrained = (expected.name, expected.pretrained) if expected is not None \
        else (args.model, pretrained_of(args))
    encoder = load_encoder(model, pretrained, args.checkpoint, args.device, backend=args.backend,
                           onnx_cache=args.onnx_cache, text_language=args.text_language,
                           int8_calibration=args.int8_calibration)
    if args.bundle is not None:
        check_model(manifest, encoder.ref, encoder.embedding_dim)
    return encoder


def _search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The search options given (as ClipSearchClient.search_text takes them); empty for plain vector search."""
    options: dict[str, Any] = {}
    if args.mode != SearchMode.VECTOR.value:
        options.update(mode=args.mode)
        if args.mode == SearchMode.HYBRID.value:
            options.update(hybrid_method=args.hybrid_method, vector_weight=args.vector_weight)
    if args.fuse is not None:
        options["fusion"] = args.fuse.as_dict()
    return options


def _served_scores(scored: PairedCorpus, client: ClipSearchClient, options: dict[str, Any],
                   progress: bool) -> RetrievalScores:
    text_ranks, image_ranks = served_ranks(scored, client, progress, options)
    return RetrievalScores.of_ranks(text_ranks, image_ranks, images=len(scored.images), complete=False)


def _bundle_search_scores(scored: PairedCorpus, args: argparse.Namespace, encoder: ClipEncoder,
                          options: dict[str, Any]) -> RetrievalScores:
    """Text → image as searches of the bundle rank its images, in this process (the bundle's live
    changes included): what a server of it would answer."""
    bundle = load_bundle(args.bundle)
    live = LiveLog(args.bundle / LIVE_FILE, bundle.items, encoder.embedding_dim) \
        if (args.bundle / LIVE_FILE).is_file() else None
    service = SearchService(encoder, bundle, QueryLimits(max_k=max(RECALL_AT)), live=live)
    ranking = Ranking(SearchMode(args.mode), FusionMethod(args.hybrid_method), args.vector_weight)
    result_options = ResultOptions(fusion=args.fuse)
    try:
        ranks = search_ranks(scored, lambda caption, k: [hit.item.uri for hit in service.search_text(
            caption, Modality.IMAGE, k, options=result_options, ranking=ranking).hits],
            progress=not args.no_progress, description="text → image by searching the bundle")
    finally:
        service.close()
        if live is not None:
            live.close()
        bundle.close()
    return RetrievalScores.of_ranks(ranks, None, images=len(scored.images), complete=False)


def _loss(exact: RetrievalScores, served: RetrievalScores) -> dict[str, dict[str, float]]:
    """How much recall the server loses against exact search with the same model, by direction and k."""
    return {direction: {f"R@{k}": round(getattr(exact, direction)[k] - getattr(served, direction)[k], 6)
                        for k in RECALL_AT if k in getattr(served, direction)}
            for direction in ("text_to_image", "image_to_text")}


def describe(record: dict[str, Any], scores: RetrievalScores, served: RetrievalScores | None,
             searched: RetrievalScores | None = None) -> str:
    """The figures as a table for people."""
    header = "".join(f"{f'R@{k}':>8}" for k in RECALL_AT) + f"{'mean rank':>11}"
    rows: list[tuple[str, dict[int, float], float | None]] = [
        ("text → image", scores.text_to_image, scores.text_to_image_mean_rank)]
    if served is not None:
        rows.append(("  via server", served.text_to_image, None))
    if searched is not None:
        rows.append(("  by search", searched.text_to_image, None))
    rows.append(("image → text", scores.image_to_text, scores.image_to_text_mean_rank))
    if served is not None and served.image_to_text:
        rows.append(("  via server", served.image_to_text, None))
    lines = [f"{record['model']} on {record['backend']}: {scores.images} images, {scores.captions} captions"
             f" ({record['skipped']} images skipped)", f"{'':16}{header}"]
    for name, recall, mean_rank in rows:
        lines.append(f"{name:16}" + "".join(f"{recall[k]:8.4f}" for k in RECALL_AT)
                     + (f"{mean_rank:11.2f}" if mean_rank is not None else f"{'-':>11}"))
    if served is not None and not served.image_to_text:
        lines.append("(image → text was not measured through the server: it holds no texts, or searches were "
                     "given options)")
    if searched is not None:
        lines.append(f"by search: searches of the bundle with {record['search']['options'] or 'its defaults'}")
    return "\n".join(lines)

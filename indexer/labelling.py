"""`python -m indexer classify`: zero-shot labels for every image item of a bundle, stored in its metadata."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.config import QueryLimits
from clipsearch.errors import BundleError, ClipSearchError
from clipsearch.modality import Modality
from clipsearch.model.zero_shot import DEFAULT_TEMPLATES, Calibration, LabelScore, ZeroShotClassifier, check_labels
from clipsearch.store.bundle import Bundle, load_bundle, rewrite_items
from clipsearch.store.items import Item
from clipsearch.util.progress import progress_bar
from indexer.common import (
    Commands,
    Fail,
    add_model_arguments,
    bundle_encoder,
    check_model_from_bundle,
    check_weights,
    describe_error,
)

LIMITS = QueryLimits(max_labels=10_000, max_templates=1_000)
"""The server's limits guard it against costly requests; a labelling run is its user's own choice."""
CHUNK = 4096
"""Image vectors scored at once: bounds memory on huge bundles."""


def add_parser(commands: Commands) -> None:
    command = commands.add_parser(
        "classify", help="zero-shot label every image of a bundle and store the label and its probability in "
                         "each item's metadata", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--bundle", type=Path, required=True, help="the bundle to label (rewritten in place, "
                                                                    "atomically)")
    command.add_argument("--labels", required=True, help="the labels, comma-separated: 'beach,mountains,city'")
    command.add_argument("--template", action="append", default=None,
                         help="a prompt template with {} for the label, e.g. 'a photo of a {}.'; repeat for an "
                              "ensemble (default: a small built-in ensemble)")
    command.add_argument("--field", default="label",
                         help="the metadata field for the label; its probability goes in FIELD_score "
                              "(FIELD_scores with --multi-label)")
    command.add_argument("--multi-label", action="store_true",
                         help="score each label on its own and store every label at or above --threshold")
    command.add_argument("--threshold", type=float, default=0.5, help="with --multi-label, the probability a "
                                                                     "label needs to be stored in FIELD")
    add_model_arguments(command, None)
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def check(args: argparse.Namespace, fail: Fail) -> None:
    check_weights(args, fail)
    check_model_from_bundle(args, fail)
    if not args.field.strip():
        fail("--field must not be empty")


def run(args: argparse.Namespace) -> int:
    labels = [label.strip() for label in args.labels.split(",")]
    templates = args.template or None
    try:
        check_labels(labels, templates or DEFAULT_TEMPLATES, LIMITS)  # before a model is loaded for nothing
        encoder = bundle_encoder(args)
        classifier = ZeroShotClassifier(Calibration.of(encoder.logit_scale, encoder.logit_bias),
                                        lambda prompts: encoder.encode_texts(prompts), LIMITS)
        scored = _score_images(args, classifier, labels, templates)
        fields = _fields(args.field, args.multi_label)

        def labelled(item: Item) -> Item:
            ranked = scored.get(item.id)
            if ranked is None:
                return item
            extra = {key: value for key, value in item.extra.items() if key not in fields}
            return replace(item, extra={**extra, **_metadata(ranked, args)})

        rewrite_items(args.bundle, labelled)
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(_summary(scored, args))
    return 0


def _score_images(args: argparse.Namespace, classifier: ZeroShotClassifier, labels: list[str],
                  templates: list[str] | None) -> dict[int, list[LabelScore]]:
    """Every image item's ranked labels, by id, from the vectors the bundle stores (nothing re-embedded)."""
    bundle = load_bundle(args.bundle, verify_checksums=False)  # only read, and rewritten under a lock after
    try:
        if Modality.IMAGE not in bundle.indices:
            raise BundleError("the bundle has no image items to label", "bundle")
        ids = [item.id for item in bundle.items if item.modality is Modality.IMAGE]
        scored: dict[int, list[LabelScore]] = {}
        with progress_bar(total=len(ids), unit="image", desc="labelling", disable=args.no_progress) as bar:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                vectors = _stored(bundle, np.array(chunk, dtype=np.int64))
                for item_id, ranked in zip(chunk, classifier.classify(vectors, labels, templates, args.multi_label,
                                                                      field="labels"), strict=True):
                    scored[item_id] = ranked
                bar.update(len(chunk))
        return scored
    finally:
        bundle.close()


def _stored(bundle: Bundle, item_ids: np.ndarray) -> np.ndarray:
    held = bundle.base_ids(Modality.IMAGE)  # ascending
    found = held[np.minimum(np.searchsorted(held, item_ids), max(0, len(held) - 1))] == item_ids if len(held) \
        else np.zeros(len(item_ids), bool)
    missing = item_ids[~found]
    if len(missing):
        raise BundleError(f"item {int(missing[0])} has no stored vector in the image index", "bundle")
    return bundle.base_vectors(Modality.IMAGE, item_ids)


def _fields(field: str, multi_label: bool) -> tuple[str, str]:
    return (field, f"{field}_scores") if multi_label else (field, f"{field}_score")


def _metadata(ranked: list[LabelScore], args: argparse.Namespace) -> dict[str, Any]:
    """Single-label: the best label and its probability. Multi-label: every label at or above the
    threshold (best first) and every label's probability."""
    if args.multi_label:
        return {args.field: [score.label for score in ranked if score.probability >= args.threshold],
                f"{args.field}_scores": {score.label: round(score.probability, 6) for score in ranked}}
    return {args.field: ranked[0].label, f"{args.field}_score": round(ranked[0].probability, 6)}


def _summary(scored: dict[int, list[LabelScore]], args: argparse.Namespace) -> str:
    counts: Counter[str] = Counter()
    for ranked in scored.values():
        chosen = [score.label for score in ranked if score.probability >= args.threshold] if args.multi_label \
            else [ranked[0].label]
        counts.update(chosen)
    fields = " and ".join(f"'{name}'" for name in _fields(args.field, args.multi_label))
    lines = [f"labelled {len(scored)} images of {args.bundle} (metadata {fields})"]
    lines += [f"  {label}: {count}" for label, count in counts.most_common()]
    return "\n".join(lines)

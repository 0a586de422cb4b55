"""`python -m indexer delete`: the HTTP API's deletes, for scripts that work on a bundle's directory,
through the same live log as the server's (a server serving the bundle sees them at its next search)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipsearch.errors import ClipSearchError
from clipsearch.modality import Modality
from clipsearch.search.writes import ids_matching
from clipsearch.store.bundle import Bundle
from clipsearch.store.collection import Collection
from clipsearch.store.filters import parse_filter
from clipsearch.store.live import LiveLog
from indexer.common import Commands, Fail, describe_error, on_live_bundle


def add_parser(commands: Commands) -> None:
    command = commands.add_parser("delete", help="delete items from a bundle through its live log",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("--bundle", type=Path, required=True, help="the bundle to delete from")
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", type=int, nargs="+", help="ids of the items to delete")
    which.add_argument("--keys", nargs="+", help="keys of the items to delete (a built item's key is its uri)")
    which.add_argument("--filter", help="delete every item passing this filter (JSON, as in searches)")
    command.add_argument("--modality", choices=["image", "text"], default="image",
                         help="with --keys: which modality the keys are of")


def check(args: argparse.Namespace, fail: Fail) -> None:
    """Nothing to check beyond argparse's own: deletes need no model."""


def run(args: argparse.Namespace) -> int:
    """Deletes need no model: the ids go straight to the live log."""
    try:
        filter = parse_filter(json.loads(args.filter), "filter") if args.filter is not None else None

        def delete(bundle: Bundle, live: LiveLog) -> list[int]:
            if filter is not None:
                return live.delete(ids_matching(Collection(bundle, live), filter))
            if args.keys is not None:
                found = (live.id_of(Modality(args.modality), key) for key in args.keys)
                return live.delete([item_id for item_id in found if item_id is not None])
            return live.delete(args.ids)

        deleted = on_live_bundle(args.bundle, None, delete)
    except json.JSONDecodeError as error:
        print(f"error: --filter: not valid JSON ({error})", file=sys.stderr)
        return 2
    except ClipSearchError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(json.dumps({"deleted": deleted}))
    return 0

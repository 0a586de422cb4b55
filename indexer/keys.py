"""`python -m indexer keys`: make, list, rotate, revoke and remove the server's API keys
(clipsearch.store.keys), in the file the server reads as CLIPSEARCH_KEYS_FILE.

A key is printed once, when it is made or rotated; the file keeps only its hash. A running server
reads the file again when it changes: a revoked key is refused from its next request on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from clipsearch.errors import ClipSearchError
from clipsearch.store.keys import (
    ApiKey,
    KeyScope,
    Rate,
    create_key,
    read_keys,
    remove_key,
    revoke_key,
    rotate_key,
)
from indexer.common import Commands, Fail, failed

KEYS_FILE_VARIABLE = "CLIPSEARCH_KEYS_FILE"


def add_parser(commands: Commands) -> None:
    command = commands.add_parser("keys", help="make, list, rotate and revoke the server's API keys",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = command.add_subparsers(dest="action", required=True)
    made = actions.add_parser("create", help="make a key and print it (once)")
    _file_argument(made)
    made.add_argument("--name", required=True, help="what the key is called in lists, logs and metrics")
    made.add_argument("--scope", choices=[scope.label for scope in KeyScope], default="read",
                      help="read: searches and lookups; write: also adds, changes and deletes items; admin: all")
    made.add_argument("--collection", action="append", default=[], metavar="NAME",
                      help="a collection the key may use (repeat for several; none given: all)")
    made.add_argument("--filter", help="a filter (JSON, as in searches) every search and write of the key stays inside")
    made.add_argument("--rate", help="requests the key may make: N/s or N/min (e.g. 10/s); unset: the server's "
                                     "CLIPSEARCH_RATE_LIMIT")
    listed = actions.add_parser("list", help="list the keys (never the keys themselves)")
    _file_argument(listed)
    listed.add_argument("--json", action="store_true", help="print JSON")
    for action, help in (("rotate", "give a key a new secret (printed once); the old one stops working"),
                         ("revoke", "stop a key working; it stays listed, and is answered 'revoked'"),
                         ("remove", "drop a key from the file")):
        changed = actions.add_parser(action, help=help)
        _file_argument(changed)
        changed.add_argument("name", help="the key's name")


def _file_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(KEYS_FILE_VARIABLE)
    parser.add_argument("--file", type=Path, default=Path(default) if default else None,
                        help=f"the keys file (default: ${KEYS_FILE_VARIABLE})")


def check(args: argparse.Namespace, fail: Fail) -> None:
    if args.file is None:
        fail(f"keys {args.action}: give --file, or set {KEYS_FILE_VARIABLE}")
    if args.action == "create":
        if args.filter is not None:
            try:
                args.filter = json.loads(args.filter)
            except json.JSONDecodeError as error:
                fail(f"--filter: not valid JSON ({error})")
        try:
            args.rate = None if args.rate is None else Rate.parse(args.rate, "--rate")
        except ClipSearchError as error:
            fail(str(error))


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "create":
            key, secret = create_key(args.file, args.name, KeyScope.named(args.scope), tuple(args.collection),
                                     args.filter, args.rate)
            _print_secret(key, secret, "made")
        elif args.action == "rotate":
            key, secret = rotate_key(args.file, args.name)
            _print_secret(key, secret, "rotated")
        elif args.action == "revoke":
            print(f"revoked key '{revoke_key(args.file, args.name).name}'", file=sys.stderr)
        elif args.action == "remove":
            print(f"removed key '{remove_key(args.file, args.name).name}'", file=sys.stderr)
        else:
            keys = read_keys(args.file).keys.values()
            if args.json:
                print(json.dumps([_listed(key) for key in keys], indent=2))
            else:
                for key in keys:
                    print(_line(key))
    except ClipSearchError as error:
        return failed(error)
    return 0


def _print_secret(key: ApiKey, secret: str, done: str) -> None:
    # The key alone on stdout, so that a script can capture it; what it is, on stderr.
    print(f"{done} key '{key.name}' ({_line(key)}); it is shown only now: store it", file=sys.stderr)
    print(secret)


def _listed(key: ApiKey) -> dict[str, Any]:
    listed = key.to_json()
    del listed["sha256"]
    return listed


def _line(key: ApiKey) -> str:
    parts = [key.name, key.scope.label, f"collections: {', '.join(key.collections) or 'all'}"]
    if key.filter is not None:
        parts.append(f"filter: {json.dumps(key.filter)}")
    if key.rate is not None:
        parts.append(f"rate: {key.rate}")
    parts.append(f"revoked {key.revoked_at}" if key.revoked_at else f"made {key.created_at}")
    return "  ".join(parts)

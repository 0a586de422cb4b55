"""Command line of the indexer: parse_args(argv) and main(argv) over a table of commands.

Each command is a module with `add_parser(commands)`, `check(args, fail)` (what argparse alone cannot
check; `fail` is the parser's error) and `run(args)` (its exit status). What several share is in
indexer/common.py.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from types import ModuleType

from indexer import (
    adding,
    building,
    compacting,
    deleting,
    demo,
    evaluation,
    keys,
    labelling,
    reindexing,
    snapshots,
    syncing,
    tuning,
)

COMMANDS: dict[str, ModuleType] = {
    "build": building, "classify": labelling, "sync": syncing, "add": adding, "delete": deleting,
    "compact": compacting, "reindex": reindexing, "rollback": reindexing, "eval": evaluation, "finetune": tuning,
    "keys": keys, "snapshot": snapshots, "restore": snapshots, "demo-data": demo,
}
"""In the order `python -m indexer --help` lists them."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m indexer",
                                     description="Embed image and text corpora into a searchable bundle.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in dict.fromkeys(COMMANDS.values()):  # a module with two commands adds both at once
        command.add_parser(commands)
    args = parser.parse_args(argv)
    COMMANDS[args.command].check(args, parser.error)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipsearch").setLevel(logging.INFO)
    status: int = COMMANDS[args.command].run(args)
    return status

"""Folding a live log into a compaction's new base: the new bundle's log, begun while writes go on
(`start_fold`: keys and file stats, the costly part) and brought up to date (`fold_since`: the
writes made since the snapshot folded in), once more under the bundle's lock before the swap. A
reindex (clipsearch.ingest.reindex) folds the same way, its items embedded again by its new model."""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import BundleReplaced
from clipsearch.modality import Modality
from clipsearch.store.items import Item
from clipsearch.store.live.log import LiveLog
from clipsearch.store.live.schema import TEXT_VECTOR_COLUMNS, create_tables, fsync, unsynced
from clipsearch.store.live.state import LiveState, members

KEYS_AT_ONCE = 10_000
"""Keys a compaction copies into the new log per step (start_fold)."""
EmbedAgain = Callable[[Sequence[Item]], Sequence[np.ndarray]]
"""A reindex's new model: each item's new vector (float32 (d,)), in order; raises if one cannot be made."""


@dataclass(frozen=True)
class Carried:
    """What a compaction's new log holds: the writes made while the new base was being built."""

    items: int
    hidden: int
    generation: int
    uris: tuple[str, ...] = ()
    """The uris of the items carried (their files must stay)."""


def start_fold(log: LiveLog, new_base: dict[Modality, np.ndarray], into: Path) -> None:
    """Begin the log of a bundle whose base holds `new_base` (ids per modality), at `into`: its
    keys and the source files' stats. The costly part of folding, done while writes go on;
    `fold_since` adds what was written since the snapshot folded in.

    Every new base item keeps its key: a base item's from base_keys, a folded item's from its
    row. A folded item already deleted has no row, and its key is free, as it was.

    Keys and stats stream from this log into the new one in id order, a batch at a time: a base
    of millions never has its keys in memory at once.
    """
    wanted = np.sort(np.concatenate([np.zeros(0, np.int64), *new_base.values()]))
    with log.reading() as old, closing(unsynced(into)) as connection:
        connection.execute("BEGIN")
        create_tables(connection)
        # A folded item's row holds its key; it comes after the base key of the same id.
        base = old.execute("SELECT id, 0, modality, key FROM base_keys ORDER BY id")
        live = old.execute("SELECT id, 1, modality, key FROM items ORDER BY id")
        rows = heapq.merge(base, live)
        latest = (row for row, following in itertools.pairwise(itertools.chain(rows, [None]))
                  if following is None or following[0] != row[0])
        while batch := list(itertools.islice(latest, KEYS_AT_ONCE)):
            ids = np.fromiter((row[0] for row in batch), np.int64, len(batch))
            rows_kept = np.searchsorted(wanted, ids)
            kept = (rows_kept < len(wanted)) & (wanted[np.minimum(rows_kept, len(wanted) - 1)] == ids) \
                if len(wanted) else np.zeros(len(ids), bool)
            connection.executemany("INSERT INTO base_keys (modality, key, id) VALUES (?, ?, ?)",
                                   ((row[2], row[3], row[0]) for row, keep in zip(batch, kept, strict=True)
                                    if keep))
        connection.executemany(
            "INSERT INTO file_stats (uri, size, mtime_ns, content_hash, generation) VALUES (?, ?, ?, ?, ?)",
            old.execute("SELECT uri, size, mtime_ns, content_hash, generation FROM file_stats"))
        connection.execute("COMMIT")


def fold_since(log: LiveLog, after: int, since: LiveState, new_base: dict[Modality, np.ndarray],
               into: Path, embed_again: EmbedAgain | None = None) -> Carried:
    """Bring the log that `start_fold` began at `into` up to date with the rows written after
    generation `after` (at first the generation of `since`, the snapshot folded into
    `new_base`; then the one this returned): added or replaced items become its live items, a
    live item deleted since goes, and every new base item replaced or deleted since is hidden.
    The next id, the generation, the count of folded changes and the file stats come along,
    so that ids and keys mean what they meant. Idempotent, so it can catch up while writes go
    on, and once more holding the bundle's lock (when no write can commit) before the swap.
    With `embed_again` (a reindex), the items written get the new model's vectors, and no fused
    text vectors (a fused bundle is not reindexed).
    """
    with log.reading() as old:
        if log.replaced():
            raise BundleReplaced(f"the bundle at {log.path.parent} was replaced while it was being compacted")
        changed = np.array(sorted({int(row[0]) for row in old.execute(
            "SELECT id FROM items WHERE generation > ?1 UNION SELECT id FROM dropped WHERE generation > ?1 "
            "UNION SELECT id FROM removed WHERE generation > ?1", (after,))}), dtype=np.int64)
        # A row of `items` touched since `after` was written since: a drop deletes the row,
        # and a base item is hidden in the transaction that writes its row.
        written = old.execute(
            "SELECT id, key, modality, uri, text, extra, content_hash, vector, written_at, "
            f"{', '.join(TEXT_VECTOR_COLUMNS)} FROM items WHERE generation > ?", (after,)).fetchall()
        file_stats = old.execute(
            "SELECT uri, size, mtime_ns, content_hash, generation FROM file_stats WHERE generation > ?",
            (after,)).fetchall()
        generation = int(log.state_value("generation") or 0)
        next_id = int(log.state_value("next_id") or 0)
        folded = int(log.state_value("folded") or 0) + since.changes
    if embed_again is not None and written:
        written = _embedded_again(written, embed_again)
    gone = np.setdiff1d(changed, [row[0] for row in written])
    hidden = [(int(item_id), modality.value) for modality, ids in new_base.items()
              for item_id in members(changed, ids)]
    with closing(unsynced(into)) as connection:
        connection.execute("BEGIN")
        connection.executemany("DELETE FROM items WHERE id = ?", ((int(item_id),) for item_id in gone))
        connection.executemany("INSERT OR IGNORE INTO removed (id, modality, generation) VALUES (?, ?, ?)",
                               ((item_id, modality, generation) for item_id, modality in hidden))
        connection.executemany(
            "INSERT OR REPLACE INTO items (id, key, modality, uri, text, extra, content_hash, vector, written_at, "
            f"{', '.join(TEXT_VECTOR_COLUMNS)}, generation) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' * len(TEXT_VECTOR_COLUMNS)}, ?)",
            ((*row, generation) for row in written))
        connection.executemany("INSERT OR REPLACE INTO file_stats (uri, size, mtime_ns, content_hash, generation) "
                               "VALUES (?, ?, ?, ?, ?)", file_stats)
        connection.executemany("INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)",
                               (("next_id", next_id), ("generation", generation), ("folded", folded)))
        connection.execute("COMMIT")
        items, removed = connection.execute(
            "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM removed)").fetchone()
        uris = tuple(str(row[0]) for row in connection.execute("SELECT uri FROM items"))
    fsync(into)
    return Carried(items=int(items), hidden=int(removed), generation=generation, uris=uris)


def _embedded_again(rows: list[Any], embed_again: EmbedAgain) -> list[Any]:
    """`fold_since`'s rows of written items (id, key, modality, uri, text, extra, content_hash, vector,
    written_at, text vectors…), each with the new model's vector and no text vectors."""
    items = [Item(id=int(row[0]), modality=Modality(row[2]), uri=str(row[3]), text=row[4],
                  extra=json.loads(row[5]) if row[5] else {}, content_hash=str(row[6])) for row in rows]
    vectors = embed_again(items)
    return [(*row[:7], np.ascontiguousarray(vector, dtype=np.float32).tobytes(), row[8],
             *([None] * len(TEXT_VECTOR_COLUMNS))) for row, vector in zip(rows, vectors, strict=True)]

"""The one result type of every search: best-first scores and ids, one row per query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopK:
    """Best-first scores (float32, (n, k)) and ids (int64, (n, k)) of n queries.

    k is at most the number of items searched. An approximate index may give id -1 (no result)
    at the tail of a row.
    """

    scores: np.ndarray
    ids: np.ndarray

    @classmethod
    def empty(cls, queries: int) -> TopK:
        return cls(np.zeros((queries, 0), np.float32), np.zeros((queries, 0), np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, number: int, k: int) -> TopK:
        """Query `number`'s first k results, as a TopK of one row."""
        return TopK(self.scores[number:number + 1, :k], self.ids[number:number + 1, :k])

"""Near-duplicate collapsing of ranked results: each group keeps its best-ranked member.

Photo libraries hold bursts, edits and re-saves of one picture, and a search that returns five
copies of it shows the user one result. clip-retrieval collapses results whose embeddings have a
cosine of 0.94 or more; that is the default here too.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.94


def collapse(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[list[int]]:
    """Group ranked results (unit rows of `vectors`, float32 (n, d), best first) greedily: in rank
    order, a row joins the group of the first kept row it has a cosine of at least `threshold`
    with, or else is kept and starts a group. Returns the groups, each kept row first, in rank order."""
    gram = vectors @ vectors.T
    kept: list[int] = []
    groups: list[list[int]] = []
    for row in range(len(vectors)):
        close = np.flatnonzero(gram[row, kept] >= threshold)
        if len(close):
            groups[int(close[0])].append(row)
        else:
            kept.append(row)
            groups.append([row])
    return groups

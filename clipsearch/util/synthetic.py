"""Synthetic embeddings shaped like CLIP's, for the benchmarks and the tests of the index layer.

numpy only: no model. Real embeddings cannot be downloaded everywhere, and uniform random vectors
say nothing about how an IVF index does, so this keeps the two properties that decide it.
"""

from __future__ import annotations

import numpy as np


class ClusteredEmbeddings:
    """Synthetic image and text embeddings with the structure that decides how IVF does on real ones:
    clusters of uneven size (log-normal weights) and a modality gap (each modality is shifted by a
    direction of its own, so text queries lie outside the images' distribution, as CLIP's do).
    Uniform random vectors have neither and say nothing about IVF recall.

    Rows are made in fixed chunks, each from its own seed, so any range is reproducible without
    making the rows before it, and five million never need to be in memory at once.
    """

    CHUNK = 1 << 16

    def __init__(self, dim: int, clusters: int = 1024, seed: int = 0, spread: float = 0.9, gap: float = 0.7) -> None:
        rng = np.random.default_rng([seed, 0])
        self.dim, self.seed, self.spread = dim, seed, spread
        self.centers = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.weights = weights / weights.sum()
        self.gaps = {modality: gap * _unit(rng.standard_normal((1, dim), dtype=np.float32))
                     for modality in ("image", "text")}

    def rows(self, modality: str, start: int, stop: int) -> np.ndarray:
        """Rows `start` to `stop` (float32 unit vectors) of `modality` ('image' or 'text')."""
        parts = []
        for chunk in range(start // self.CHUNK, -(-stop // self.CHUNK)):
            made = self._chunk(modality, chunk)
            offset = chunk * self.CHUNK
            parts.append(made[max(start, offset) - offset:min(stop, offset + self.CHUNK) - offset])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def _chunk(self, modality: str, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1 if modality == "image" else 2, chunk])
        cluster = rng.choice(len(self.centers), size=self.CHUNK, p=self.weights)
        noise = rng.standard_normal((self.CHUNK, self.dim), dtype=np.float32) * (self.spread / np.sqrt(self.dim))
        return _unit(self.centers[cluster] + noise + self.gaps[modality])


def _unit(rows: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit

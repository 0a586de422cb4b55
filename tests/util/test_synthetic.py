"""Synthetic embeddings shaped like CLIP's: reproducible by range, clustered, and apart by modality."""

from __future__ import annotations

import numpy as np

from clipsearch.util.synthetic import ClusteredEmbeddings


def test_any_range_of_rows_equals_the_same_rows_made_in_one_go() -> None:
    data = ClusteredEmbeddings(dim=16, clusters=8, seed=3)
    whole = data.rows("image", 0, 2 * data.CHUNK + 10)
    across_a_chunk_boundary = slice(data.CHUNK - 5, data.CHUNK + 7)
    np.testing.assert_array_equal(data.rows("image", data.CHUNK - 5, data.CHUNK + 7), whole[across_a_chunk_boundary])
    assert whole.dtype == np.float32 and np.allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    assert data.rows("text", 4, 4).shape == (0, 16)


def test_texts_lie_apart_from_images_as_clips_do() -> None:
    data = ClusteredEmbeddings(dim=64, clusters=16, seed=0)
    images, texts = data.rows("image", 0, 2000), data.rows("text", 0, 2000)
    within = float(np.mean(images[:1000] @ images[1000:].T))
    across = float(np.mean(images[:1000] @ texts[1000:].T))
    assert within > across  # the modality gap: a text query is out of the images' distribution

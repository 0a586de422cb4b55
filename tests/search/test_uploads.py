"""Uploaded query images: decoded in a bounded pool as the indexer decodes files, each defect named by field."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from clipsearch.errors import InvalidQuery, QueryImageTooLarge
from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.uploads import UploadDecoder
from clipsearch.util.images import decode_image
from tests.support.imagefiles import image_bytes, noise_image, png_declaring_size


@pytest.fixture()
def decoder(encoder: ClipEncoder) -> Iterator[UploadDecoder]:
    opened = UploadDecoder(encoder.prepare_image, encoder.image_size, max_pixels=10_000, timeout_s=5.0)
    yield opened
    opened.close()


def test_an_upload_gives_the_pixels_the_indexer_would(decoder: UploadDecoder, encoder: ClipEncoder) -> None:
    data = image_bytes(noise_image(3))
    expected = encoder.prepare_image(decode_image(data, 10_000, draft_size=encoder.image_size))
    assert torch.equal(decoder.decode(data, "image"), expected)
    assert decoder.image(data, "image").size == noise_image(3).size


def test_bytes_that_are_no_image_are_refused_naming_the_field(decoder: UploadDecoder) -> None:
    with pytest.raises(InvalidQuery) as raised:
        decoder.decode(b"definitely not an image", "terms[1].data")
    assert raised.value.field == "terms[1].data"


def test_an_image_over_the_pixel_limit_is_too_large_not_invalid(decoder: UploadDecoder) -> None:
    with pytest.raises(QueryImageTooLarge) as raised:
        decoder.decode(png_declaring_size(1000, 1000), "image")
    assert raised.value.field == "image"


def test_a_decode_that_takes_too_long_is_refused_with_the_limit(encoder: ClipEncoder) -> None:
    def slow(image: object) -> torch.Tensor:
        time.sleep(1.0)
        return torch.zeros(3, 4, 4, dtype=torch.uint8)

    decoder = UploadDecoder(slow, encoder.image_size, max_pixels=10_000, timeout_s=0.05)
    try:
        with pytest.raises(InvalidQuery, match="longer than 0.05 s to decode"):
            decoder.decode(image_bytes(noise_image(1)), "image")
    finally:
        decoder.close()

"""Query images: decoded and prepared in a small pool of threads, within a time limit.

Whatever goes wrong inside decoding, orientation or preparation is the upload's fault and is
answered as such (InvalidQuery naming the field), never as a server error.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import torch
from PIL import Image

from clipsearch.errors import ImageDecodeError, ImageTooLarge, InvalidQuery, QueryImageTooLarge
from clipsearch.model.preprocess import ImagePreparer
from clipsearch.util.images import decode_image

log = logging.getLogger(__name__)

Decoded = TypeVar("Decoded")

DECODE_WORKERS = 4
"""Query images decoded at once; more would only compete with the model for the CPU."""


class UploadDecoder:
    """Image bytes → uint8 pixels (3, H, W) ready for the image tower, exactly as the indexer prepares files."""

    def __init__(self, prepare: ImagePreparer, draft_size: int, max_pixels: int, timeout_s: float) -> None:
        self.prepare, self.draft_size = prepare, draft_size
        self.max_pixels, self.timeout_s = max_pixels, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode")

    def submit(self, data: bytes) -> Future[torch.Tensor]:
        """Start decoding `data`; pass the future to `result`."""
        return self._pool.submit(self._decode_and_prepare, data)

    def result(self, decoding: Future[Decoded], field: str) -> Decoded:
        """The pixels of a decoding started by `submit`, or InvalidQuery naming `field`."""
        try:
            return decoding.result(timeout=self.timeout_s)
        except FutureTimeout:
            decoding.cancel()
            raise InvalidQuery(field, f"the image took longer than {self.timeout_s:g} s to decode") from None
        except ImageTooLarge as error:
            raise QueryImageTooLarge(field, error.reason) from error
        except ImageDecodeError as error:
            raise InvalidQuery(field, error.reason) from error

    def decode(self, data: bytes, field: str) -> torch.Tensor:
        return self.result(self.submit(data), field)

    def image(self, data: bytes, field: str) -> Image.Image:
        """The decoded RGB image itself, not prepared for the model (for other models), with the same
        limits and errors; no draft decoding, since its consumer's input size is not known here."""
        return self.result(self._pool.submit(decode_image, data, self.max_pixels), field)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _decode_and_prepare(self, data: bytes) -> torch.Tensor:
        # Draft-mode JPEG decoding at the model's input size, exactly as the indexer decodes: the
        # same file gives the same vector whether it was indexed or uploaded.
        image = decode_image(data, self.max_pixels, draft_size=self.draft_size)
        try:
            return self.prepare(image)
        except Exception as error:  # a picture that decoded but cannot be resized is still the upload's fault
            log.info("an upload decoded but could not be prepared", exc_info=True)
            raise ImageDecodeError(f"cannot prepare the image for the model: {error}") from error

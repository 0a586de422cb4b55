"""Decode untrusted image bytes into an upright RGB picture, or fail with a short reason.

Used by the indexer's workers and by the server's upload handling alike, so both accept and
refuse exactly the same files.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipsearch.errors import ImageDecodeError, ImageTooLarge

DEFAULT_MAX_PIXELS = 64_000_000
"""About 8000×8000: larger than any camera photo, far below what would exhaust memory."""

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
"""The only formats decoded, by their content (never by name): what cameras, phones and the web produce.
Pillow opens many more (TIFF, DDS, AVIF, PSD, ICO, …); each is more decoder code reachable by an
upload, for pictures nobody uploads as a photo, so they are refused."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
"""EXIF orientation → the transposition that shows the picture upright (as ImageOps.exif_transpose does)."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode `data` into an RGB image with its EXIF orientation applied.

    Animated images give their first frame; transparency is composited on white; 16-bit and CMYK
    images are converted rather than clipped. `draft_size` lets JPEG decode at a reduced scale
    that is still at least that many pixels on each side (much faster for large photos).
    Raises ImageTooLarge past `max_pixels` (checked before any pixel is decoded) and
    ImageDecodeError for anything that is not a complete image in one of ACCEPTED_FORMATS:
    whatever fails inside decoding or orientation is the file's fault, never the caller's.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (instead of failing) between its own limit and twice it; make that fail.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if draft_size is not None and image.format == "JPEG":
                image.draft(None, (draft_size, draft_size))
            image.load()
            return _to_upright_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLarge(f"image rejected as a decompression bomb: {error}") from error
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from error
    except Exception as error:  # Pillow's decoders and EXIF parsing raise many kinds on hostile input
        raise ImageDecodeError(f"cannot decode the image ({type(error).__name__}: {error})") from error


def read_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file; unreadable files raise ImageDecodeError too."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(f"cannot read file: {error.strerror or error}") from error
    return decode_image(data, max_pixels)


def _to_upright_rgb(image: Image.Image) -> Image.Image:
    # Only the orientation tag is read. ImageOps.exif_transpose also rewrites the rest of the EXIF
    # block, and fails on tags of the wrong type (a resolution stored as text) that cameras and
    # editors do write; the pixels need none of it.
    orientation = image.getexif().get(_ORIENTATION_TAG)
    if isinstance(orientation, int) and orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255, which turns most photos white.
        pixels = np.asarray(image, dtype=np.uint32)
        scale = 257 if pixels.max(initial=0) > 255 else 1
        image = Image.fromarray((pixels // scale).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image

"""Generate the image files the tests need, good and bad, with Pillow."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_bytes(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def picture_at(path: Path) -> Image.Image:
    """The RGB picture in the file at `path`, read whole (the file is closed again)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def upload_path(bundle: Path, data: bytes, suffix: str = ".png") -> str:
    """Where the service stores an uploaded file of `data`: in the bundle's live-images/, named by
    its sha256 (written out here, not asked of the code under test)."""
    return str((bundle / "live-images" / f"{hashlib.sha256(data).hexdigest()}{suffix}").resolve())


def save(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels: a decompression bomb's calling card."""
    data = bytearray(image_bytes(Image.new("L", (1, 1))))
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return bytes(data)


def exif_rotated_jpeg(size: tuple[int, int] = (40, 20)) -> bytes:
    """A JPEG stored `size` wide whose EXIF orientation (6) says: rotate 90° clockwise to view."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(noise_image(1, size), "JPEG", exif=exif.tobytes())


def animated_gif(first: tuple[int, int, int] = (255, 0, 0), second: tuple[int, int, int] = (0, 0, 255)) -> bytes:
    frames = [Image.new("RGB", (16, 16), first), Image.new("RGB", (16, 16), second)]
    return image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png(value: int = 40000) -> bytes:
    return image_bytes(Image.fromarray(np.full((16, 16), value, dtype=np.uint16)))


def transparent_palette_png() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 8, 16))
    return image_bytes(image, transparency=0)


def good_and_bad_files(folder: Path) -> dict[str, Path]:
    """A corpus of every kind of file an indexer meets: the ones it must index and the ones it must skip."""
    files = {
        "rgb.jpg": image_bytes(noise_image(10), "JPEG"),
        "UPPER.PNG": image_bytes(noise_image(11)),
        "cmyk.jpg": image_bytes(noise_image(12).convert("CMYK"), "JPEG"),
        "gray.png": image_bytes(noise_image(13).convert("L")),
        "sixteen.png": sixteen_bit_png(),
        "palette.png": transparent_palette_png(),
        "rgba.webp": image_bytes(noise_image(14).convert("RGBA"), "WEBP"),
        "animated.gif": animated_gif(),
        "rotated.jpeg": exif_rotated_jpeg(),
        "bitmap.bmp": image_bytes(noise_image(15), "BMP"),
        "one_pixel.png": image_bytes(Image.new("RGB", (1, 1), (9, 9, 9))),
        "zero.jpg": b"",
        "not_an_image.jpg": b"this is plain text renamed to .jpg\n",
        "page.png": b"<!doctype html><html><body>hello</body></html>",
        "truncated.jpg": image_bytes(noise_image(16, (64, 64)), "JPEG")[:300],
        "truncated.png": image_bytes(noise_image(17, (64, 64)))[:200],
        "bomb.png": png_declaring_size(100_000, 100_000),
        "rgb_copy.jpg": image_bytes(noise_image(10), "JPEG"),
    }
    return {name: save(folder / name, data) for name, data in files.items()}


GOOD_FILES = {"rgb.jpg", "UPPER.PNG", "cmyk.jpg", "gray.png", "sixteen.png", "palette.png", "rgba.webp",
              "animated.gif", "rotated.jpeg", "bitmap.bmp", "one_pixel.png"}
BAD_FILES = {"zero.jpg", "not_an_image.jpg", "page.png", "truncated.jpg", "truncated.png", "bomb.png"}
DUPLICATE_FILES = {"rgb_copy.jpg"}


def jpeg_with_exif(entries: list[tuple[int, int, int, bytes]], size: tuple[int, int] = (40, 20)) -> bytes:
    """A JPEG whose EXIF block holds these raw big-endian IFD entries: (tag, type, count, 4 value bytes).

    Pillow will not write ill-typed tags itself, so the block is assembled here by hand.
    """
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHI", tag, kind, count) + value
                                                      for tag, kind, count, value in entries) + struct.pack(">I", 0)
    return image_bytes(noise_image(2, size), "JPEG", exif=b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd)


def rotated_jpeg_with_a_text_resolution() -> bytes:
    """Orientation 6 (rotate to view) beside an XResolution stored as ASCII text instead of a rational:
    ImageOps.exif_transpose raises TypeError on it."""
    return jpeg_with_exif([(0x0112, 3, 1, b"\x00\x06\x00\x00"), (0x011A, 2, 4, b"7x2\x00")])


OTHER_FORMATS = ("TIFF", "ICO", "DDS", "AVIF", "PCX", "TGA", "PPM", "SGI", "QOI", "JPEG2000")
"""Formats Pillow opens (and writes) that are not accepted."""

ACCEPTED_SAMPLES = {"JPEG": {}, "PNG": {}, "WEBP": {}, "BMP": {}, "GIF": {"save_all": True}}


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """`count` damaged copies of `data`: bytes flipped, runs zeroed or repeated, cut short, all from one seed."""
    rng = np.random.default_rng(seed)
    damaged = []
    for _ in range(count):
        copy = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, len(copy)))
            match int(rng.integers(0, 4)):
                case 0:
                    copy[at] ^= 1 << int(rng.integers(0, 8))
                case 1:
                    copy[at:at + int(rng.integers(1, 16))] = bytes(int(rng.integers(1, 16)))
                case 2:
                    copy[at:at] = copy[at:at + int(rng.integers(1, 64))]
                case _:
                    copy[at] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            copy = copy[:int(rng.integers(1, len(copy)))]
        damaged.append(bytes(copy))
    return damaged


def words_picture(text: str, size: tuple[int, int] = (420, 160), font_size: int = 36,
                  font: str = "DejaVuSans.ttf") -> Image.Image:
    """Black `text` on white (one line per line of it), in a Debian font (indexer.signs finds it):
    something OCR reads at once."""
    from PIL import ImageDraw, ImageFont

    from indexer.signs import font_path

    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).multiline_text((20, 30), text, font=ImageFont.truetype(str(font_path(font)), font_size),
                                         fill="black", spacing=16)
    return image

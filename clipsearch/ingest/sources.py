"""Corpus readers: turn an image folder, an image manifest, a video folder or a text corpus into source items.

Readers only list; they never decode images or videos. Items already known to be unusable (a file the
manifest names that does not exist, a malformed line) are listed too, with their problem, so the
build reports them and every item keeps a stable position.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsearch.errors import SourceError
from clipsearch.util.audio import looks_like_audio
from clipsearch.util.images import IMAGE_SUFFIXES
from clipsearch.util.media import MEDIA_HEAD_BYTES
from clipsearch.util.video import looks_like_video

MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl", ".parquet"})
TEXT_SUFFIXES = frozenset({".txt", ".jsonl", ".csv"})
SIDECAR_SUFFIXES = frozenset({".txt", ".json"})


@dataclass(frozen=True)
class Columns:
    """Column names in manifest and text files."""

    image: str = "image"
    caption: str = "caption"
    text: str = "text"


@dataclass(frozen=True)
class SourceItem:
    """One item to index. `text` is an image's caption or the text itself; `path` is set for images."""

    uri: str
    path: Path | None = None
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    """Set when the item is already known to be unusable; the build skips and reports it."""
    sound_of_video: bool = False
    """Set on a video listed again as a sound, for its sound track (clipsearch.store.segments.SOUND_OF_VIDEO)."""


def read_image_source(source: Path, columns: Columns = Columns()) -> list[SourceItem]:
    """List the images of a folder (recursively) or of a CSV, JSONL or Parquet manifest file."""
    if source.is_dir():
        return list(_read_image_folder(source))
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        return [_image_row(row, source.parent, columns) for row in _read_rows(source, columns.image)]
    if source.is_file():
        raise SourceError(f"{source} is neither a folder nor a manifest "
                          f"({', '.join(sorted(MANIFEST_SUFFIXES))})", "images")
    raise SourceError(f"no folder or file at {source}", "images")


def read_video_source(source: Path) -> list[SourceItem]:
    """List the videos of a folder (recursively), recognised by content (clipsearch.util.video.looks_like_video),
    each with its sidecar caption (.txt) and metadata (.json) as an image has; or one video file."""
    return _read_media_source(source, looks_like_video, "videos")


def read_audio_source(source: Path) -> list[SourceItem]:
    """List the sound files of a folder (recursively), recognised by content (WAV, FLAC, MP3, Ogg, M4A:
    clipsearch.util.audio.looks_like_audio), with their sidecars as videos have; or one sound file."""
    return _read_media_source(source, looks_like_audio, "audio")


def _read_media_source(source: Path, recognises: Callable[[bytes], bool], field: str) -> list[SourceItem]:
    if source.is_file():
        return [SourceItem(uri=str(source.resolve()), path=source.resolve())]
    if not source.is_dir():
        raise SourceError(f"no folder or file at {source}", field)
    resolved_root = source.resolve()
    found = []
    for path in sorted(source.rglob("*"), key=lambda path: path.relative_to(source).as_posix()):
        if path.suffix.lower() in SIDECAR_SUFFIXES or path.suffix.lower() in IMAGE_SUFFIXES or not path.is_file():
            continue
        try:
            with path.open("rb") as file:
                head = file.read(MEDIA_HEAD_BYTES)
        except OSError as error:
            found.append(SourceItem(uri=str(path), problem=f"cannot read file: {error.strerror or error}"))
            continue
        if not recognises(head):
            continue
        uri = str(path.resolve())
        if not path.resolve().is_relative_to(resolved_root):
            found.append(SourceItem(uri=str(path), problem=f"symbolic link leaves the corpus folder (to {uri})"))
            continue
        caption, extra, problem = _read_sidecars(path)
        found.append(SourceItem(uri=uri, path=path.resolve(), text=caption, extra=extra, problem=problem))
    return found


def read_text_source(source: Path, columns: Columns = Columns()) -> list[SourceItem]:
    """List the texts of a .txt file (one per non-blank line) or of a JSONL or CSV file with a text column."""
    if not source.is_file():
        raise SourceError(f"no file at {source}", "texts")
    suffix = source.suffix.lower()
    if suffix == ".txt":
        with source.open(encoding="utf-8", errors="replace") as file:
            return [_text_item(f"{source}#L{number}", line.strip(), {}, number)
                    for number, line in enumerate(file, start=1) if line.strip()]
    if suffix in (".jsonl", ".csv"):
        return [_text_row(row, source, columns) for row in _read_rows(source, columns.text)]
    raise SourceError(f"{source} must be .txt, .jsonl or .csv", "texts")


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, Any] | None
    problem: str | None = None


def _read_image_folder(root: Path) -> Iterator[SourceItem]:
    resolved_root = root.resolve()
    files = sorted((path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()),
                   key=lambda path: path.relative_to(root).as_posix())
    for path in files:
        uri = str(path.resolve())
        if not path.resolve().is_relative_to(resolved_root):
            yield SourceItem(uri=str(path), problem=f"symbolic link leaves the corpus folder (to {uri})")
            continue
        caption, extra, problem = _read_sidecars(path)
        yield SourceItem(uri=uri, path=path.resolve(), text=caption, extra=extra, problem=problem)


def _read_sidecars(image: Path) -> tuple[str | None, dict[str, Any], str | None]:
    caption_file, metadata_file = image.with_suffix(".txt"), image.with_suffix(".json")
    caption = None
    extra: dict[str, Any] = {}
    if caption_file.is_file():
        caption = _clean_caption(caption_file.read_text(encoding="utf-8", errors="replace"))
    if metadata_file.is_file():
        try:
            loaded = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return caption, {}, f"sidecar {metadata_file.name} is not valid JSON: {error}"
        if not isinstance(loaded, dict):
            return caption, {}, f"sidecar {metadata_file.name} must hold a JSON object"
        extra = loaded
    return caption, extra, None


def _clean_caption(caption: str) -> str | None:
    """A caption is metadata of an image, so a stray NUL is dropped rather than losing the image."""
    return caption.replace("\x00", "").strip() or None


def _read_rows(source: Path, required_column: str) -> list[_Row]:
    suffix = source.suffix.lower()
    if suffix == ".csv":
        with source.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            reader = csv.DictReader(file)
            _require_column(source, required_column, reader.fieldnames or [])
            return [_Row(line=reader.line_num, values=dict(row)) for row in reader]
    if suffix == ".parquet":
        import pyarrow.parquet as parquet

        try:
            table = parquet.read_table(source)
        except Exception as error:  # pyarrow raises its own error hierarchy
            raise SourceError(f"{source}: cannot read Parquet: {error}") from error
        _require_column(source, required_column, table.column_names)
        return [_Row(line=number, values=values) for number, values in enumerate(table.to_pylist(), start=1)]
    rows = []
    with source.open(encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(_Row(line=number, values=None, problem=f"line {number}: invalid JSON ({error.msg})"))
                continue
            if not isinstance(values, dict):
                rows.append(_Row(line=number, values=None, problem=f"line {number}: not a JSON object"))
                continue
            rows.append(_Row(line=number, values=values))
    if rows and not any(row.values and required_column in row.values for row in rows):
        raise SourceError(f"{source}: no row has the column {required_column!r}")
    return rows


def _require_column(source: Path, column: str, present: Sequence[str]) -> None:
    if column not in present:
        raise SourceError(f"{source}: no column {column!r} (columns: {', '.join(present) or 'none'})")


def _extra(values: dict[str, Any], used: set[str]) -> dict[str, Any]:
    # Round-trip through JSON so dates, decimals and other Parquet types are stored as plain values.
    kept: dict[str, Any] = json.loads(json.dumps({key: value for key, value in values.items() if key not in used},
                                                 default=str))
    return kept


def _image_row(row: _Row, base: Path, columns: Columns) -> SourceItem:
    if row.values is None:
        return SourceItem(uri=f"line {row.line}", problem=row.problem)
    location = row.values.get(columns.image)
    caption = row.values.get(columns.caption)
    extra = _extra(row.values, {columns.image, columns.caption})
    caption = _clean_caption(str(caption)) if caption is not None else None
    if not isinstance(location, str) or not location.strip():
        return SourceItem(uri=f"line {row.line}", problem=f"line {row.line}: empty {columns.image!r} column")
    location = location.strip()
    if "://" in location and not location.startswith("file://"):
        return SourceItem(uri=location, problem="remote URLs are not fetched; download the images first")
    path = Path(location.removeprefix("file://"))
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_file():
        return SourceItem(uri=str(path), problem="file not found")
    return SourceItem(uri=str(path), path=path, text=caption, extra=extra)


def _text_row(row: _Row, source: Path, columns: Columns) -> SourceItem:
    uri = f"{source}#L{row.line}"
    if row.values is None:
        return SourceItem(uri=uri, problem=row.problem)
    text = row.values.get(columns.text)
    if not isinstance(text, str) or not text.strip():
        return SourceItem(uri=uri, problem=f"line {row.line}: empty or missing {columns.text!r} column")
    return _text_item(uri, text.strip(), _extra(row.values, {columns.text}), row.line)


def _text_item(uri: str, text: str, extra: dict[str, Any], line: int) -> SourceItem:
    if "\x00" in text:
        # A NUL byte means binary data or a broken export, not prose; the server refuses them too.
        return SourceItem(uri=uri, problem=f"line {line}: text contains NUL characters")
    return SourceItem(uri=uri, text=text, extra=extra)

"""Opening untrusted media files with PyAV, for clipsearch.util.video and clipsearch.util.audio: what
FFmpeg raises while opening one becomes the caller's own error, with a short reason."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def open_media(av: Any, source: Path | bytes, timeout_s: float, what: str, error: Callable[[str], Exception],
               check_time: Callable[[], None]) -> Any:
    """The container in `source` (a path, or the file's bytes), open for reading. A file that cannot
    be opened raises `error(reason)`, the reason naming `what` it should have been. When FFmpeg
    fails, `check_time` runs first: FFmpeg's own timeout interrupts it with an error of its own,
    which should read as the time bound it is."""
    if isinstance(source, bytes) and not source:
        raise error("empty file (0 bytes)")
    file: IO[bytes] | str = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        return av.open(file, mode="r", timeout=timeout_s)
    except av.error.FFmpegError as failure:
        check_time()
        raise error(f"not a readable {what} ({failure_reason(failure)})") from None
    except (OSError, ValueError) as failure:
        raise error(f"cannot open the file: {failure}") from None


def failure_reason(error: Exception) -> str:
    """FFmpeg's own words for an error (its strerror), without PyAV's wrapping."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__

"""Text in images: PP-OCR's models (detection, orientation, recognition) run by RapidOCR on ONNX Runtime.

The `[ocr]` extra installs `rapidocr-onnxruntime`, whose wheel carries PP-OCRv4 mobile models
(about 15 MB) that read Chinese and English: nothing is downloaded, so it runs offline, in CI and
in the image. Without the extra, loading a reader fails with a message that names it. Other model
files (PP-OCRv5, the server models) can be given in OcrConfig.

A reader is one engine behind `read(image) -> ReadResult`: its lines of text, each with its box in
the image's own pixels and its confidence. It never raises for a bad image: an image whose text
could not be read within the time limit, or whose reading failed, gives a result with no lines and
a `problem`, so that the caller indexes the image without text and reports it.

PP-OCR's multilingual recogniser often drops the space between Latin words ("seminarfree",
"templeclosed": a third of the English lines of the rendered corpus, docs/quality.md), which
keyword search cannot then find as words. Where a line holds such a run, it also gets `spaced`:
the line with the run split into words by wordninja (word frequencies from Wikipedia, in the
`[ocr]` extra), which the keyword index holds beside the line as read.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image

from clipsearch.config import OCR_ENGINE, OcrConfig
from clipsearch.errors import ModelLoadError

EXTRA_MESSAGE = "reading text in images needs the [ocr] extra (pip install 'clipsearch[ocr]')"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextLine:
    """One line of text found in an image."""

    text: str
    box: tuple[tuple[int, int], ...]
    """Its four corners in the image's pixels, clockwise from the top left (a rotated line's box is rotated)."""
    score: float
    """The recogniser's confidence, 0 to 1."""
    spaced: str | None = None
    """The text with spaces put back between Latin words run together; None where none were."""

    def as_dict(self) -> dict[str, Any]:
        line = {"text": self.text, "box": [list(point) for point in self.box], "score": round(self.score, 4)}
        return line | ({"spaced": self.spaced} if self.spaced is not None else {})


@dataclass(frozen=True)
class ReadResult:
    """What a reader found in one image: its lines, top to bottom, or why it found nothing."""

    lines: tuple[TextLine, ...] = ()
    elapsed_s: float = 0.0
    problem: str | None = None
    """Why the text could not be read (a time-out, a failure); None when it was read, even if it holds none."""

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


_RUN = re.compile(r"[A-Za-z]{5,}")
"""Latin letters long enough to be two words run together (shorter runs are left as read)."""


def with_spaces(text: str) -> str:
    """`text` with each run of Latin letters that is not a word itself split into the words it is
    most likely made of ("seminarfree" → "seminar free"); `text` unchanged without wordninja."""
    try:
        import wordninja
    except ImportError:
        return text

    def split(match: re.Match[str]) -> str:
        run = match.group(0)
        if run.lower() in _known_words():
            return run
        parts = _joined_where_a_word(wordninja.split(run))
        return " ".join(parts) if len(parts) > 1 and all(len(part) > 1 for part in parts) else run
    return _RUN.sub(split, text)


def _joined_where_a_word(parts: list[str]) -> list[str]:
    """Neighbouring parts joined again where together they are a word themselves: word frequencies
    alone split "welcomeinvoice" into "welcome in voice", the rarer long word losing to two common
    short ones."""
    joined: list[str] = []
    for part in parts:
        if joined and (joined[-1] + part).lower() in _known_words():
            joined[-1] += part
        else:
            joined.append(part)
    return joined


@functools.cache
def _known_words() -> frozenset[str]:
    """wordninja's own vocabulary (126,134 lowercase words), which it keeps only as its cost table."""
    import wordninja

    return frozenset(wordninja.DEFAULT_LANGUAGE_MODEL._wordcost)


class TextReader:
    """A loaded engine with its settings. `read` is safe to call from several threads."""

    def __init__(self, engine: Any, config: OcrConfig, description: str) -> None:
        self.engine, self.config, self.description = engine, config, description
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ocr")
        self._lock = threading.Lock()

    def read(self, image: Image.Image) -> ReadResult:
        """The text of `image`, within the time limit; never raises for the image's sake."""
        started = time.perf_counter()
        with self._lock:
            future = self._executor.submit(self._read_now, image)
        try:
            lines = future.result(timeout=self.config.timeout_s)
        except FutureTimeout:
            # ONNX Runtime cannot be interrupted: the late reading finishes on its own thread and is
            # dropped, and later images get a fresh thread rather than wait behind it.
            with self._lock:
                self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="ocr")
            return ReadResult(elapsed_s=time.perf_counter() - started,
                              problem=f"text not read within {self.config.timeout_s:g} s")
        except Exception as error:  # the engine raises many kinds (cv2.error, ONNX Runtime's, ValueError)
            return ReadResult(elapsed_s=time.perf_counter() - started, problem=f"text reading failed: {error}")
        return ReadResult(tuple(lines), time.perf_counter() - started)

    def _read_now(self, image: Image.Image) -> list[TextLine]:
        scale = 1.0
        if max(image.size) > self.config.max_side:
            # Scaled down before detection: what the engine would do itself, but on a copy it never
            # has to convert at full size.
            scale = max(image.size) / self.config.max_side
            image = image.resize((max(1, round(image.width / scale)), max(1, round(image.height / scale))),
                                 Image.Resampling.BILINEAR)
        found, _ = self.engine(image.convert("RGB"), text_score=self.config.recognition_min_score,
                               box_thresh=self.config.detection_min_score)
        lines = []
        for box, text, score in found or ():
            text = " ".join(str(text).split())
            if text:
                corners = tuple((round(float(x) * scale), round(float(y) * scale)) for x, y in box)
                spaced = with_spaces(text)
                lines.append(TextLine(text, corners, float(score), spaced if spaced != text else None))
        return lines

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def load_reader(config: OcrConfig) -> TextReader:
    """A reader for `config`; ModelLoadError names the setting or the extra that is missing."""
    config.check()
    try:
        import onnxruntime
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as error:
        raise ModelLoadError(f"{EXTRA_MESSAGE}: {error}", "ocr") from error
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    options: dict[str, Any] = {"max_side_len": config.max_side, "det_limit_side_len": config.detection_side,
                               "det_box_thresh": config.detection_min_score, "text_score": config.recognition_min_score,
                               # RapidOCR copies its global thread counts to each of its three sessions.
                               "intra_op_num_threads": config.threads, "inter_op_num_threads": 1}
    for stage, path in (("det", config.detection_model), ("rec", config.recognition_model),
                        ("cls", config.classifier_model)):
        options[f"{stage}_use_cuda"] = cuda
        if path is not None:
            options[f"{stage}_model_path"] = str(path)
    try:
        engine = RapidOCR(**options)
    except Exception as error:  # a bad model file: ONNX Runtime's own error types
        raise ModelLoadError(f"cannot load the OCR models: {error}", "ocr") from error
    return TextReader(engine, config, describe(config))


def describe(config: OcrConfig) -> str:
    """The engine, its version and its model files (and CUDA, where ONNX Runtime has it), as items
    and the manifest record them."""
    import onnxruntime
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml

    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    shipped = read_yaml(str(DEFAULT_CFG_PATH))
    files = [Path(path or shipped[stage]["model_path"]).name
             for stage, path in (("Det", config.detection_model), ("Cls", config.classifier_model),
                                 ("Rec", config.recognition_model))]
    version = metadata.version("rapidocr-onnxruntime")
    return f"{OCR_ENGINE} {version} ({', '.join(files)}){' on CUDA' if cuda else ''}"


_readers: dict[tuple[int, OcrConfig], TextReader] = {}
_readers_lock = threading.Lock()


def reader_for(config: OcrConfig) -> TextReader:
    """This process's reader for `config`, loaded on first use: each build worker process loads its
    own (a reader does not pickle), once. Keyed by process id too: a process forked from one that
    had loaded a reader loads its own rather than use sessions whose threads stayed behind."""
    with _readers_lock:
        key = (os.getpid(), config)
        reader = _readers.get(key)
        if reader is None:
            reader = _readers[key] = load_reader(config)
            log.info("loaded %s", reader.description)
        return reader

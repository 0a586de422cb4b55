"""The exported backends: both towers exported to ONNX once, cached on disk, run by ONNX Runtime or
OpenVINO, checked against PyTorch at load.

On a CPU, ONNX Runtime runs CLIP's towers markedly faster than eager PyTorch (docs/benchmarks.md),
which is why Immich serves its CLIP models through it, and OpenVINO (clipsearch.model.openvino_runtime)
faster again on this machine. This module:

- exports the image tower (dynamic batch) and the text tower (dynamic batch, and dynamic length
  where clipsearch.model.text_trim makes trimming exact) with torch.onnx's exporter, once per model,
  weights, opset and precision, into a cache directory. An export is written to a temporary
  directory and renamed into place, so a crash or two processes exporting at once never leave a
  half-written one behind;
- optionally quantises both to int8, with static scales calibrated on a sample of the collection
  (clipsearch.model.int8): faster again, and only when asked for ("onnx-int8", "openvino-int8");
- checks the exported towers against the PyTorch towers on fixed probe inputs before use, and
  keeps PyTorch (with a warning) if the cosine of any probe falls below the backend's minimum;
- for 'auto' with both runtimes installed, times both on one query and one image and keeps the faster.

onnxruntime, onnx and onnxscript come with the `[onnx]` extra and are imported only here and in
clipsearch.model.int8; openvino with the `[openvino]` extra, in clipsearch.model.openvino_runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from clipsearch.config import RANDOM_WEIGHTS_SEED
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.int8 import RECIPE as INT8_RECIPE
from clipsearch.model.int8 import CalibrationSample, quantise_towers
from clipsearch.model.openvino_runtime import INSTALL_HINT as OPENVINO_HINT
from clipsearch.model.openvino_runtime import load_openvino_towers, openvino_available
from clipsearch.util.files import fsync_directory

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
"""'auto' on a CPU is the faster of ONNX Runtime and OpenVINO (fp32) where both are installed,
measured at load (use_fastest); else whichever is installed; else PyTorch."""

EXPORTS = {"onnx": "onnx", "onnx-int8": "onnx-int8", "openvino": "onnx", "openvino-int8": "onnx-int8"}
"""The export each backend runs: OpenVINO reads ONNX Runtime's files, fp32 or int8."""

FP32_OF = {"onnx-int8": "onnx", "openvino-int8": "openvino"}
"""What an int8 backend runs instead when its self-check fails."""

OPSET = 18
MIN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.98, "openvino": 0.9999, "openvino-int8": 0.98}
"""The lowest cosine to PyTorch any self-check probe may have. fp32 exports measure 0.9999999;
calibrated int8 0.9996 on the shapes model (docs/benchmarks.md). The floor catches a broken export,
not a poor calibration: retrieval judges that (clipsearch.model.int8)."""

SELF_CHECK_SAMPLE = 8
"""Images (and twice as many texts) of an int8 export's calibration sample added to its self-check's
probes: random probes alone do not look like the collection."""

EXPORT_FORMAT = 1
"""Part of every cache key: raise it when what is exported changes, so old caches are not reused."""

STARTUP_QUERY = "a photo of a dog"
STARTUP_REPEATS = 5
"""use_fastest times each candidate's median over this many calls of one query and one image."""

_SPIN = "0"
"""ONNX Runtime's worker threads busy-wait for work by default. Off: the server's other threads
(HTTP, batcher, search) and other workers need those cores between forward passes."""

_INSTALL_HINT = "pip install 'clipsearch[onnx]' (onnxruntime, onnx and onnxscript)"


class Towers(Protocol):
    """Both towers of an export, loaded by a runtime: torch tensors in, torch tensors out."""

    @property
    def directory(self) -> Path: ...

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...


def onnx_available() -> bool:
    """Whether the [onnx] extra's packages can be imported."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: torch.device) -> str:
    """The backend that will run: 'torch', 'onnx', 'onnx-int8', 'openvino', 'openvino-int8', or 'auto'
    where both runtimes are installed on a CPU (use_fastest decides). Raises ModelLoadError (field
    'backend') for an unknown name, an exported backend asked for on a GPU, or one without its extra."""
    if requested not in BACKENDS:
        raise ModelLoadError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}", "backend")
    if requested == "auto":
        if device.type != "cpu" or not onnx_available():  # both runtimes run the exporter's files
            return "torch"
        return "auto" if openvino_available() else "onnx"
    if requested == "torch":
        return requested
    if device.type != "cpu":
        raise ModelLoadError(f"backend {requested!r} runs on the CPU only; on {device} use 'torch'", "backend")
    if not onnx_available():
        raise ModelLoadError(f"backend {requested!r} needs the [onnx] extra: {_INSTALL_HINT}", "backend")
    if requested.startswith("openvino") and not openvino_available():
        raise ModelLoadError(f"backend {requested!r} needs the [openvino] extra: {OPENVINO_HINT}", "backend")
    return requested


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/clipsearch/onnx, or ~/.cache/clipsearch/onnx."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipsearch" / "onnx"


@dataclass(frozen=True)
class OnnxTowers:
    """Both towers as ONNX Runtime sessions, taking and returning torch tensors like open_clip's."""

    image: Any
    text: Any
    directory: Path
    run_options: Any = None
    """ONNX Runtime's RunOptions for every pass: `load_towers` asks each to hand its arena back after it."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.image.run(None, {"pixels": pixels.contiguous().numpy()}, self.run_options)[0])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.text.run(None, {"tokens": tokens.contiguous().numpy()}, self.run_options)[0])


def use_onnx(encoder: ClipEncoder, backend: str, cache_dir: Path | None = None, threads: int | None = None,
             calibration: CalibrationSample | None = None) -> bool:
    """Run `encoder`'s towers on an exported backend (BACKENDS but 'auto' and 'torch'); True if that is
    now the case.

    Exports (or finds in `cache_dir`) the towers, loads them with `threads` intra-op threads, and
    compares them with the PyTorch towers. Any failure leaves PyTorch in place, with a warning:
    slower, never wrong. The int8 backends are calibrated on `calibration` (required for them), and
    run their fp32 export instead when their self-check fails.
    """
    cache_dir = cache_dir or default_cache_dir()
    threads = threads or encoder.threads
    prepared = _prepared(encoder, backend, cache_dir, threads, calibration)
    if prepared is None:
        return False
    towers, worst = prepared
    if worst < MIN_COSINE[backend] and backend in FP32_OF:
        # Quantisation costs some models more than others: the fp32 export is still exact and fast.
        log.warning("int8 quantisation of %s agrees with PyTorch only to cosine %.6f (< %s); running the fp32 "
                    "export instead", encoder.ref.describe(), worst, MIN_COSINE[backend])
        return use_onnx(encoder, FP32_OF[backend], cache_dir, threads)
    if worst < MIN_COSINE[backend]:
        log.warning("the %s export of %s agrees with PyTorch only to cosine %.6f (< %s); the model runs on "
                    "PyTorch. Delete %s to export it again.", backend, encoder.ref.describe(), worst,
                    MIN_COSINE[backend], towers.directory)
        return False
    _adopt(encoder, backend, towers, worst, threads)
    return True


def use_fastest(encoder: ClipEncoder, cache_dir: Path | None = None, threads: int | None = None) -> bool:
    """'auto' with both runtimes installed: prepare ONNX Runtime's and OpenVINO's fp32 towers, time one
    query and one image on each, and keep the faster (encoder.backend_startup_ms holds the figures).
    True if either now runs the towers."""
    cache_dir = cache_dir or default_cache_dir()
    threads = threads or encoder.threads
    candidates = {}
    for backend in ("onnx", "openvino"):
        prepared = _prepared(encoder, backend, cache_dir, threads, None)
        if prepared is not None and prepared[1] >= MIN_COSINE[backend]:
            candidates[backend] = prepared
    if not candidates:
        return False
    timings = {backend: startup_ms(encoder, towers) for backend, (towers, _) in candidates.items()}
    fastest = min(timings, key=timings.__getitem__)
    _adopt(encoder, fastest, *candidates[fastest], threads)
    encoder.backend_startup_ms = timings
    log.info("auto picked %s: one query and one image took %s", fastest,
             ", ".join(f"{ms:.1f} ms on {backend}" for backend, ms in timings.items()))
    return True


def startup_ms(encoder: ClipEncoder, towers: Towers) -> float:
    """The median time of one query plus the median time of one image on `towers`, in milliseconds."""
    height, width = encoder.preprocess_config.size
    pixels = torch.full((1, 3, height, width), 128, dtype=torch.uint8)
    image_forward, text_forward = encoder.towers
    backend = encoder.backend
    encoder.set_towers(towers.encode_image, towers.encode_text, "timing")
    try:
        total = 0.0
        for call in (partial(encoder.encode_texts, [STARTUP_QUERY]), partial(encoder.encode_images, pixels)):
            call()  # the first call of a shape may compile or allocate: not counted
            times = []
            for _ in range(STARTUP_REPEATS):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            total += statistics.median(times)
    finally:
        encoder.set_towers(image_forward, text_forward, backend)
    return round(total * 1000, 2)


def _prepared(encoder: ClipEncoder, backend: str, cache_dir: Path, threads: int,
              calibration: CalibrationSample | None) -> tuple[Towers, float] | None:
    """`backend`'s towers and their self-check's lowest cosine, or None (logged) where they cannot be had."""
    if backend in FP32_OF and calibration is None:
        raise ModelLoadError("int8 is calibrated on a sample of the collection's own images: name a folder of them",
                             "int8_calibration")
    try:
        towers = _cached_towers(encoder, backend, cache_dir, threads, calibration)
        return towers, self_check(encoder, towers, calibration if backend in FP32_OF else None)
    except Exception:  # an exporter or runtime failure must not stop the service: PyTorch still works
        log.warning("the %s backend could not be prepared; the model runs on PyTorch", backend, exc_info=True)
        return None


def _adopt(encoder: ClipEncoder, backend: str, towers: Towers, worst: float, threads: int) -> None:
    encoder.set_towers(towers.encode_image, towers.encode_text, backend)
    encoder.backend_cosine = worst
    log.info("%s runs on %s (%d threads, cosine to PyTorch ≥ %.7f), from %s", encoder.ref.describe(), backend,
             threads, worst, towers.directory)


def self_check(encoder: ClipEncoder, towers: Towers, sample: CalibrationSample | None = None) -> float:
    """The lowest cosine between `towers` and the encoder's current towers over fixed probes: texts of
    several lengths in one batch and alone, and three images; plus, with `sample`, the first
    SELF_CHECK_SAMPLE of its images and twice as many of its texts."""
    texts = ["a", "a photo of a dog on a beach at sunset",
             " ".join(["a long caption that runs past the context of the text tower"] * 12)]
    rng = np.random.default_rng(RANDOM_WEIGHTS_SEED)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((224, 224), (97, 300),
                                                                                           (640, 480))]
    if sample is not None:
        images += list(islice(sample.decoded_images(), SELF_CHECK_SAMPLE))
        texts += sample.texts[:2 * SELF_CHECK_SAMPLE]
    reference = [encoder.encode_texts(texts), encoder.encode_texts(texts[1:2]), encoder.encode_images(images)]
    image_forward, text_forward = encoder.towers
    encoder.set_towers(towers.encode_image, towers.encode_text, "self-check")
    try:
        exported = [encoder.encode_texts(texts), encoder.encode_texts(texts[1:2]), encoder.encode_images(images)]
    finally:
        encoder.set_towers(image_forward, text_forward, "torch")
    # Rows are unit vectors, so a row-wise dot product is the cosine.
    return float(min((mine * theirs).sum(axis=1).min() for mine, theirs in zip(exported, reference, strict=True)))


def cache_key(encoder: ClipEncoder, backend: str, calibration: CalibrationSample | None = None) -> str:
    """Names the export `backend` runs (EXPORTS) by everything that decides its content."""
    backend = EXPORTS[backend]
    ref = encoder.ref
    identity = {"format": EXPORT_FORMAT, "model": ref.name, "pretrained": ref.pretrained,
                "checkpoint_sha256": ref.checkpoint_sha256,
                "seed": None if ref.pretrained or ref.checkpoint_sha256 else RANDOM_WEIGHTS_SEED,
                "opset": OPSET, "backend": backend, "trimmed_text": encoder.text_trim is not None,
                "torch": _version("torch"), "open_clip": _version("open_clip_torch")}
    if backend == "onnx-int8":
        # Calibrated on a sample: another sample, another export (dynamic int8 exports had no such key).
        identity["calibration"] = calibration.digest() if calibration is not None else None
        identity["int8_recipe"] = INT8_RECIPE
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{ref.name.replace('/', '_')}-{backend}-{digest}"


def _cached_towers(encoder: ClipEncoder, backend: str, cache_dir: Path, threads: int,
                   calibration: CalibrationSample | None) -> Towers:
    export = EXPORTS[backend]
    load = load_openvino_towers if backend.startswith("openvino") else load_towers
    directory = _exported(encoder, export, cache_dir, calibration)
    try:
        return load(directory, threads)
    except Exception:  # a damaged cache entry (a file deleted or truncated by hand): export it again
        log.warning("the cached ONNX export %s cannot be loaded; exporting again", directory, exc_info=True)
        _discard(directory)
    return load(_exported(encoder, export, cache_dir, calibration), threads)


def _exported(encoder: ClipEncoder, export: str, cache_dir: Path, calibration: CalibrationSample | None = None
              ) -> Path:
    """The cache entry of `encoder`'s export `export` ('onnx' or 'onnx-int8'), exported first if there is none."""
    directory = cache_dir / cache_key(encoder, export, calibration)
    if not directory.is_dir():
        _export_into(directory, lambda target: _write_towers(encoder, export, cache_dir, target, calibration))
    return directory


def _write_towers(encoder: ClipEncoder, export: str, cache_dir: Path, target: Path,
                  calibration: CalibrationSample | None) -> None:
    record: dict[str, Any] = {"model": encoder.ref.describe(), "backend": export, "opset": OPSET}
    if export == "onnx-int8":
        assert calibration is not None  # use_onnx refuses int8 without one
        quantise_towers(encoder, _exported(encoder, "onnx", cache_dir), target, calibration)
        record["calibration"] = {"folder": str(calibration.folder), "images": len(calibration.images),
                                 "texts": len(calibration.texts), "digest": calibration.digest()}
    else:
        _export_fp32(encoder, target)
    (target / "export.json").write_text(json.dumps(record, indent=2))


def _export_fp32(encoder: ClipEncoder, target: Path) -> None:
    log.info("exporting %s to ONNX (once; later starts load it from %s)", encoder.ref.describe(), target.parent)
    model = encoder.model
    height, width = encoder.preprocess_config.size
    batch = torch.export.Dim("batch", min=1, max=4096)
    pixels = torch.zeros((2, 3, height, width), dtype=torch.float32)
    _export(_Tower(model.encode_image).eval(), pixels, "pixels", {0: batch}, target / "image.onnx")
    tokens = encoder.tokenize(["a photo of a dog", "a cat"])
    if encoder.text_trim is not None:
        length = torch.export.Dim("length", min=2, max=encoder.context_length)
        _export(_Tower(encoder.text_trim).eval(), tokens[:, :8], "tokens", {0: batch, 1: length},
                target / "text.onnx")
    else:
        _export(_Tower(model.encode_text).eval(), tokens, "tokens", {0: batch}, target / "text.onnx")


def _export(tower: torch.nn.Module, example: torch.Tensor, input_name: str, dynamic: dict[int, Any],
            path: Path) -> None:
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(tower, (example,), str(path), dynamo=True, opset_version=OPSET, external_data=True,
                          input_names=[input_name], output_names=["features"],
                          dynamic_shapes={"inputs": dynamic}, verbose=False)


class _Tower(torch.nn.Module):
    """One tower as a module the exporter can trace: `inputs` → features."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self._forward = forward

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._forward(inputs)


def load_towers(directory: Path, threads: int) -> OnnxTowers:
    """The towers of the export in `directory` as ONNX Runtime sessions of `threads` intra-op threads each."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", _SPIN)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL

    # The CPU arena keeps the largest batch's activations for good (340 MB more resident after one batch
    # of 64 images on ViT-B-32); shrinking it after each pass hands that back at no cost in speed, where
    # turning the arena off cost a one-text query 10% (docs/benchmarks.md, "Against clip-retrieval").
    run_options = onnxruntime.RunOptions()
    run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def session(name: str) -> Any:
        return onnxruntime.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])

    return OnnxTowers(image=session("image.onnx"), text=session("text.onnx"), directory=directory,
                      run_options=run_options)


def _export_into(directory: Path, write: Callable[[Path], None]) -> None:
    """Write a cache entry into a temporary sibling and rename it into place: readers see all of it or
    none. When another process finished the same entry first, theirs is kept."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging)
        for path in staging.iterdir():
            with path.open("rb") as file:
                os.fsync(file.fileno())
        fsync_directory(staging)
        try:
            staging.rename(directory)
        except OSError:
            if not directory.is_dir():
                raise
            log.info("another process exported %s first; using that one", directory)
        fsync_directory(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _discard(directory: Path) -> None:
    # Rename first, so that no reader ever sees a half-deleted entry under the real name.
    doomed = directory.parent / f".{directory.name}.discarded.{uuid.uuid4().hex[:8]}"
    directory.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None

"""The ONNX Runtime backend: both towers exported once, cached on disk, checked against PyTorch at load.

On a CPU, ONNX Runtime runs CLIP's towers markedly faster than eager PyTorch (docs/benchmarks.md),
which is why Immich serves its CLIP models through it. This module:

- exports the image tower (dynamic batch) and the text tower (dynamic batch, and dynamic length
  where clipsearch.model.text_trim makes trimming exact) with torch.onnx's exporter, once per model,
  weights, opset and precision, into a cache directory. An export is written to a temporary
  directory and renamed into place, so a crash or two processes exporting at once never leave a
  half-written one behind;
- optionally quantises both to int8 (ONNX Runtime's dynamic quantisation of the matrix products):
  faster again, at a measured cost in accuracy, and only when asked for ("onnx-int8");
- checks the exported towers against the PyTorch towers on fixed probe inputs before use, and
  keeps PyTorch (with a warning) if the cosine of any probe falls below the backend's minimum.

onnxruntime, onnx and onnxscript come with the `[onnx]` extra and are imported only here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipsearch.config import RANDOM_WEIGHTS_SEED
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.util.files import fsync_directory

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
"""'auto' is ONNX Runtime (fp32) on a CPU when the [onnx] extra is installed, else PyTorch."""

OPSET = 18
MIN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.98}
"""The lowest cosine to PyTorch any self-check probe may have. fp32 exports measure 0.9999999;
int8 measured 0.999 (text) and 0.992 (image) on ViT-B-32 (docs/benchmarks.md)."""

EXPORT_FORMAT = 1
"""Part of every cache key: raise it when what is exported changes, so old caches are not reused."""

_SPIN = "0"
"""ONNX Runtime's worker threads busy-wait for work by default. Off: the server's other threads
(HTTP, batcher, search) and other workers need those cores between forward passes."""

_INSTALL_HINT = "pip install 'clipsearch[onnx]' (onnxruntime, onnx and onnxscript)"


def onnx_available() -> bool:
    """Whether the [onnx] extra's packages can be imported."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: torch.device) -> str:
    """The backend that will run: 'torch', 'onnx' or 'onnx-int8'. Raises ModelLoadError (field
    'backend') for an unknown name, ONNX asked for on a GPU, or ONNX without its extra."""
    if requested not in BACKENDS:
        raise ModelLoadError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}", "backend")
    if requested == "auto":
        return "onnx" if device.type == "cpu" and onnx_available() else "torch"
    if requested == "torch":
        return requested
    if device.type != "cpu":
        raise ModelLoadError(f"backend {requested!r} runs on the CPU only; on {device} use 'torch'", "backend")
    if not onnx_available():
        raise ModelLoadError(f"backend {requested!r} needs the [onnx] extra: {_INSTALL_HINT}", "backend")
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

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.image.run(None, {"pixels": pixels.contiguous().numpy()})[0])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.text.run(None, {"tokens": tokens.contiguous().numpy()})[0])


def use_onnx(encoder: ClipEncoder, backend: str, cache_dir: Path | None = None, threads: int | None = None) -> bool:
    """Run `encoder`'s towers on ONNX Runtime ('onnx' or 'onnx-int8'); True if that is now the case.

    Exports (or finds in `cache_dir`) the towers, loads them with `threads` intra-op threads, and
    compares them with the PyTorch towers. Any failure leaves PyTorch in place, with a warning:
    slower, never wrong.
    """
    cache_dir = cache_dir or default_cache_dir()
    threads = threads or encoder.threads
    try:
        towers = _cached_towers(encoder, backend, cache_dir, threads)
        worst = self_check(encoder, towers)
    except Exception:  # an exporter or runtime failure must not stop the service: PyTorch still works
        log.warning("the ONNX backend could not be prepared; the model runs on PyTorch", exc_info=True)
        return False
    if worst < MIN_COSINE[backend] and backend == "onnx-int8":
        # Quantisation costs some models more than others: the fp32 export is still exact and fast.
        log.warning("int8 quantisation of %s agrees with PyTorch only to cosine %.6f (< %s); running the fp32 "
                    "ONNX export instead", encoder.ref.describe(), worst, MIN_COSINE[backend])
        return use_onnx(encoder, "onnx", cache_dir, threads)
    if worst < MIN_COSINE[backend]:
        log.warning("the ONNX export of %s agrees with PyTorch only to cosine %.6f (< %s); the model runs on "
                    "PyTorch. Delete %s to export it again.", encoder.ref.describe(), worst, MIN_COSINE[backend],
                    towers.directory)
        return False
    encoder.set_towers(towers.encode_image, towers.encode_text, backend)
    log.info("%s runs on ONNX Runtime (%s, %d threads, cosine to PyTorch ≥ %.7f), from %s",
             encoder.ref.describe(), backend, threads, worst, towers.directory)
    return True


def self_check(encoder: ClipEncoder, towers: OnnxTowers) -> float:
    """The lowest cosine between `towers` and the encoder's current towers over fixed probes: texts of
    several lengths in one batch and alone, and three images."""
    texts = ["a", "a photo of a dog on a beach at sunset",
             " ".join(["a long caption that runs past the context of the text tower"] * 12)]
    rng = np.random.default_rng(RANDOM_WEIGHTS_SEED)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((224, 224), (97, 300),
                                                                                           (640, 480))]
    reference = [encoder.encode_texts(texts), encoder.encode_texts(texts[1:2]), encoder.encode_images(images)]
    image_forward, text_forward = encoder.towers
    encoder.set_towers(towers.encode_image, towers.encode_text, "self-check")
    try:
        exported = [encoder.encode_texts(texts), encoder.encode_texts(texts[1:2]), encoder.encode_images(images)]
    finally:
        encoder.set_towers(image_forward, text_forward, "torch")
    # Rows are unit vectors, so a row-wise dot product is the cosine.
    return float(min((mine * theirs).sum(axis=1).min() for mine, theirs in zip(exported, reference, strict=True)))


def cache_key(encoder: ClipEncoder, backend: str) -> str:
    """Names an export by everything that decides its content."""
    ref = encoder.ref
    identity = {"format": EXPORT_FORMAT, "model": ref.name, "pretrained": ref.pretrained,
                "checkpoint_sha256": ref.checkpoint_sha256,
                "seed": None if ref.pretrained or ref.checkpoint_sha256 else RANDOM_WEIGHTS_SEED,
                "opset": OPSET, "backend": backend, "trimmed_text": encoder.text_trim is not None,
                "torch": _version("torch"), "open_clip": _version("open_clip_torch")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{ref.name.replace('/', '_')}-{backend}-{digest}"


def _cached_towers(encoder: ClipEncoder, backend: str, cache_dir: Path, threads: int) -> OnnxTowers:
    directory = _exported(encoder, backend, cache_dir)
    try:
        return _load(directory, threads)
    except Exception:  # a damaged cache entry (a file deleted or truncated by hand): export it again
        log.warning("the cached ONNX export %s cannot be loaded; exporting again", directory, exc_info=True)
        _discard(directory)
    return _load(_exported(encoder, backend, cache_dir), threads)


def _exported(encoder: ClipEncoder, backend: str, cache_dir: Path) -> Path:
    """The cache entry for `encoder` at `backend`, exported first if there is none."""
    directory = cache_dir / cache_key(encoder, backend)
    if not directory.is_dir():
        _export_into(directory, lambda target: _write_towers(encoder, backend, cache_dir, target))
    return directory


def _write_towers(encoder: ClipEncoder, backend: str, cache_dir: Path, target: Path) -> None:
    if backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = _exported(encoder, "onnx", cache_dir)
        for tower in ("image", "text"):
            # Only the matrix products: quantising the patch convolution costs accuracy for no speed.
            quantize_dynamic(fp32 / f"{tower}.onnx", target / f"{tower}.onnx", weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=True)
    else:
        _export_fp32(encoder, target)
    (target / "export.json").write_text(json.dumps({"model": encoder.ref.describe(), "backend": backend,
                                                    "opset": OPSET}, indent=2))


def _export_fp32(encoder: ClipEncoder, target: Path) -> None:
    log.info("exporting %s to ONNX (once; later starts load it from %s)", encoder.ref.describe(), target.parent)
    model = encoder.model
    height, width = encoder.preprocess_config.size
    batch = torch.export.Dim("batch", min=1, max=4096)
    pixels = torch.zeros((2, 3, height, width), dtype=torch.float32)
    _export(_Tower(model.encode_image).eval(), pixels, "pixels", {0: batch}, target / "image.onnx")
    tokens = encoder.tokenizer(["a photo of a dog", "a cat"])
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


def _load(directory: Path, threads: int) -> OnnxTowers:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", _SPIN)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL

    def session(name: str) -> Any:
        return onnxruntime.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])

    return OnnxTowers(image=session("image.onnx"), text=session("text.onnx"), directory=directory)


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

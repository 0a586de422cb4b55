"""OpenVINO runs the towers' ONNX exports (clipsearch.model.onnx_backend), as Immich offers on Intel CPUs.

It reads the same files ONNX Runtime does, fp32 or calibrated int8 (clipsearch.model.int8), and
compiles each for this machine's CPU. On the 2-core AMD EPYC of docs/benchmarks.md it ran ViT-B-32's
fp32 towers 1.1–1.2× as fast as ONNX Runtime, and the int8 export 2.0–3.5× as fast as ONNX Runtime's
fp32: its int8 kernels fuse what ONNX Runtime runs as separate nodes.

Precision is pinned to f32: OpenVINO would otherwise compute in bf16 wherever the CPU has it (the
int8 export's float parts too), a silent loss the self-check should not have to find.

openvino comes with the [openvino] extra and is imported only here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

INSTALL_HINT = "pip install 'clipsearch[openvino]' (openvino, with the [onnx] extra's exporter)"


def openvino_available() -> bool:
    """Whether openvino can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class OpenVinoTowers:
    """Both towers compiled by OpenVINO, taking and returning torch tensors like open_clip's."""

    image: Any
    text: Any
    directory: Path
    _requests: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._infer(self.image, "image", pixels.contiguous().numpy()))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._infer(self.text, "text", tokens.contiguous().numpy()))

    def _infer(self, compiled: Any, tower: str, inputs: np.ndarray) -> np.ndarray:
        # An infer request serves one call at a time: each thread (the batchers', explain's) keeps its own.
        request = getattr(self._requests, tower, None)
        if request is None:
            request = compiled.create_infer_request()
            setattr(self._requests, tower, request)
        features: np.ndarray = request.infer({0: inputs})[0]  # a copy: the request's buffer is reused
        return features


def load_openvino_towers(directory: Path, threads: int) -> OpenVinoTowers:
    """The export in `directory` (image.onnx, text.onnx) compiled for the CPU with `threads` threads each."""
    import openvino

    core = openvino.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}

    def compiled(name: str) -> Any:
        return core.compile_model(core.read_model(str(directory / name)), "CPU", config)

    return OpenVinoTowers(image=compiled("image.onnx"), text=compiled("text.onnx"), directory=directory)

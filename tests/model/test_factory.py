"""load_encoder: a model name with a pretrained tag, a checkpoint file or random weights, on a device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipsearch.config import OFFLINE_MODEL
from clipsearch.errors import ModelLoadError
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder


def test_random_weights_are_the_same_on_every_load(encoder: ClipEncoder) -> None:
    again = load_encoder(OFFLINE_MODEL, pretrained=None, device="cpu")
    np.testing.assert_array_equal(again.encode_texts(["same"]), encoder.encode_texts(["same"]))
    assert again.ref == encoder.ref


def test_a_local_checkpoint_file_loads_and_is_identified_by_its_hash(encoder: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt"
    state = {name: tensor * 0.5 for name, tensor in encoder.model.state_dict().items()}
    torch.save({"state_dict": state}, checkpoint)
    loaded = load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=checkpoint, device="cpu")
    assert loaded.ref.checkpoint_sha256 is not None and loaded.ref.pretrained is None
    assert not np.allclose(loaded.encode_texts(["x"]), encoder.encode_texts(["x"]))


def test_unknown_model_names_are_refused_with_the_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_encoder("no-such-model", pretrained=None, device="cpu")


def test_a_missing_checkpoint_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing.pt"):
        load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=tmp_path / "missing.pt", device="cpu")


def test_cuda_is_refused_clearly_when_there_is_no_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_encoder(OFFLINE_MODEL, pretrained=None, device="cuda")


@pytest.mark.network
def test_the_default_pretrained_model_loads() -> None:
    default = load_encoder(device="cpu")
    assert default.embedding_dim == 512

"""Opening a bundle to search and write: model checked, read-only directories served as built, retries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from clipsearch.config import OFFLINE_MODEL
from clipsearch.errors import BundleReplaced, ModelMismatch
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.search.open import LIVE_ATTEMPTS, close_service, on_live_bundle, open_service, opened_service
from clipsearch.store.bundle import Bundle
from clipsearch.store.live import LIVE_FILE, LiveLog
from tests.support.corpora import private_copy


def test_a_service_opens_the_bundle_with_its_live_log_and_closes_both(encoder: ClipEncoder, bundle_path: Path,
                                                                       tmp_path: Path) -> None:
    path = private_copy(bundle_path, tmp_path)
    with opened_service(encoder, path) as service:
        assert service.collection.live is not None and service.bundle.path == path
        live = service.collection.live
    with pytest.raises(Exception, match="closed"):
        live.generation()


def test_a_bundle_of_another_model_is_refused(encoder: ClipEncoder, bundle_path: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tuned.pt"
    torch.save({"state_dict": encoder.model.state_dict()}, checkpoint)
    tuned = load_encoder(OFFLINE_MODEL, pretrained=None, checkpoint=checkpoint, device="cpu")
    with pytest.raises(ModelMismatch, match="checkpoint sha256"):
        open_service(tuned, private_copy(bundle_path, tmp_path / "copy"))


def test_a_bundle_whose_live_log_cannot_be_opened_is_served_as_built_saying_why(
        encoder: ClipEncoder, bundle_path: Path, tmp_path: Path) -> None:
    path = private_copy(bundle_path, tmp_path)
    for log_file in path.glob(f"{LIVE_FILE}*"):  # the session's bundle has a log once a server served it
        log_file.unlink()
    (path / LIVE_FILE).mkdir()  # as unopenable as a read-only directory, even for root
    with pytest.raises(sqlite3.Error):
        open_service(encoder, path)
    problems: list[str] = []
    service = open_service(encoder, path, on_read_only=problems.append)
    assert service.collection.live is None and "cannot be opened for writing" in problems[0]
    close_service(service)


def test_work_that_keeps_meeting_a_replaced_bundle_stops_after_the_last_attempt(bundle_path: Path,
                                                                                tmp_path: Path) -> None:
    path = private_copy(bundle_path, tmp_path)
    attempts: list[int] = []
    retries: list[int] = []

    def replaced(bundle: Bundle, live: LiveLog) -> None:
        attempts.append(len(attempts))
        raise BundleReplaced("compacted meanwhile")

    with pytest.raises(BundleReplaced):
        on_live_bundle(path, None, replaced, on_retry=lambda: retries.append(1))
    assert len(attempts) == LIVE_ATTEMPTS and len(retries) == LIVE_ATTEMPTS - 1

"""Faults of the machine under a running server, on a filesystem of the test's own (a tmpfs): a full
disk is answered 507 naming it, a read-only store and a lock held elsewhere 503, each on a
connection that stays open, with searches answering throughout, /info and the metrics saying why,
writes going through again by themselves once the fault is gone, and every acknowledged write
still there after kill -9 and a restart."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from clipsearch.model.encoder import ClipEncoder
from clipsearch.search.open import opened_service
from clipsearch.search.writes import CollectionWriter, TextEntry
from clipsearch.store.manifest import bundle_lock
from tests.support.imagefiles import image_bytes, noise_image
from tests.support.serving import ADMIN, start_server_process
from tests.support.small_disk import MiB, SmallDisk, small_disk

WRITE = {"X-Admin-Key": ADMIN}


class Connection:
    """One keep-alive HTTP connection, kept by hand, to see whether the server closes it."""

    def __init__(self, url: str) -> None:
        self.connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
        self.connection.connect()
        self.socket = self.connection.sock

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, object]]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        payload = json.loads(response.read())
        assert not response.will_close, f"{method} {path} closed the connection"
        assert self.connection.sock is self.socket, "the client had to connect again"
        return response.status, dict(response.getheaders()), payload

    def upload(self, seed: int) -> tuple[int, dict[str, str], dict[str, object]]:
        request = upload_request("http://server", seed)
        return self.request("POST", "/items", request.read(), dict(request.headers))

    def add_text(self, text: str, key: str) -> tuple[int, dict[str, str], dict[str, object]]:
        body = json.dumps({"items": [{"text": text, "key": key}]}).encode()
        return self.request("POST", "/items", body, {**WRITE, "Content-Type": "application/json"})

    def search(self) -> list[int]:
        status, _, answer = self.request("POST", "/search/text", json.dumps({"text": "a photo", "k": 3}).encode(),
                                         {"Content-Type": "application/json"})
        assert status == 200, answer
        return [hit["id"] for hit in answer["results"]]  # type: ignore[index, union-attr]

    def close(self) -> None:
        self.connection.close()


@contextmanager
def connected(url: str) -> Iterator[Connection]:
    connection = Connection(url)
    try:
        yield connection
    finally:
        connection.close()


def upload_request(url: str, seed: int) -> httpx.Request:
    picture = image_bytes(noise_image(seed, (160, 120)))  # about 58 KB: no compression shrinks noise
    return httpx.Request("POST", f"{url}/items", files={"file": (f"{seed}.png", picture, "image/png")},
                         data={"key": f"upload-{seed}", "caption": f"upload {seed}"}, headers=WRITE)


def upload(url: str, seed: int) -> httpx.Response:
    with httpx.Client(timeout=60) as client:
        return client.send(upload_request(url, seed))


def metric(url: str, sample: str) -> float:
    """The value of one sample of /metrics, named with its labels: `name{label="value"}`."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.rsplit(" ", 1)[0] == sample:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


@pytest.fixture()
def bundle_on_disk(bundle_path: Path, disk: SmallDisk) -> Path:
    return Path(shutil.copytree(bundle_path, disk.path / "bundle"))


def test_uploads_until_the_disk_is_full_get_507_and_every_acknowledged_one_survives_kill_9(
        bundle_on_disk: Path, disk: SmallDisk) -> None:
    process, url = start_server_process(bundle_on_disk)
    try:
        disk.fill(leave_bytes=2 * MiB)
        acknowledged: dict[int, int] = {}  # id → the seed of the image it holds
        for seed in range(200):  # 2 MiB holds about 35 of them
            response = upload(url, seed)
            if response.status_code != 200:
                break
            acknowledged[response.json()["ids"][0]] = seed
        assert response.status_code == 507, response.text
        assert len(acknowledged) >= 10
        reason = response.json()["reason"]
        assert reason.startswith("no space left for ") and f"on the filesystem at {disk.path}" in reason
        assert " free of 16.0 MiB " in reason and "nothing of it was kept" in reason

        with connected(url) as connection:
            status, _, answer = connection.upload(500)
            assert status == 507 and answer["field"] is None
            assert connection.search()  # the same connection answers a search at once
        assert httpx.get(f"{url}/ready").status_code == 200
        writes = httpx.get(f"{url}/info").json()["writes"]
        assert writes["accepted"] is False and writes["refused"] == "disk_full" and writes["refusals"] >= 2
        assert writes["disk"]["mount"] == str(disk.path)
        assert writes["disk"]["free_bytes"] < 2 * 64 * 1024  # not room for two uploads
        assert metric(url, 'clipsearch_writes_refused{collection="default",reason="disk_full"}') == 1.0
        assert metric(url, 'clipsearch_write_refusals_total{collection="default",reason="disk_full"}') >= 2.0
        assert not any(path.suffix == ".tmp" for path in (bundle_on_disk / "live-images").iterdir())

        disk.empty()  # room again: the next write goes through, with no restart
        resumed = upload(url, 1000)
        assert resumed.status_code == 200, resumed.text
        acknowledged[resumed.json()["ids"][0]] = 1000
        assert httpx.get(f"{url}/info").json()["writes"]["accepted"] is True
        assert metric(url, 'clipsearch_writes_refused{collection="default",reason="disk_full"}') == 0.0

        disk.fill()
        assert upload(url, 1001).status_code == 507
        os.kill(process.pid, signal.SIGKILL)  # on a full disk, mid-refusal: only what was committed counts
        process.wait()
        disk.resize(32 * MiB)  # the volume grown, the filler still there
        process, url = start_server_process(bundle_on_disk)
        for item_id, seed in acknowledged.items():
            assert httpx.get(f"{url}/items/{item_id}").json()["caption"] == f"upload {seed}"
            stored = httpx.get(f"{url}/items/{item_id}/image")
            assert stored.status_code == 200 and stored.content == image_bytes(noise_image(seed, (160, 120)))
        assert upload(url, 1002).status_code == 200
    finally:
        process.kill()
        process.wait()


@contextmanager
def server(bundle: Path, **settings: str) -> Iterator[Server]:
    """`python -m app` over `bundle`, killed with SIGKILL at the end (or by the test, through `kill_9`)."""
    running = Server(bundle, settings)
    try:
        yield running
    finally:
        running.process.kill()
        running.process.wait()


class Server:
    def __init__(self, bundle: Path, settings: dict[str, str]) -> None:
        self.bundle, self.settings = bundle, settings
        self.process, self.url = start_server_process(bundle, **settings)

    def kill_9_and_restart(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)  # no shutdown, no checkpoint: only what was committed
        self.process.wait()
        self.process, self.url = start_server_process(self.bundle, **self.settings)


def assert_all_there(url: str, texts: dict[int, str], uploads: dict[int, int]) -> None:
    """Every acknowledged text and upload, by id, with its content."""
    for item_id, text in texts.items():
        assert httpx.get(f"{url}/items/{item_id}").json()["text"] == text
    for item_id, seed in uploads.items():
        assert httpx.get(f"{url}/items/{item_id}/image").content == image_bytes(noise_image(seed, (160, 120)))


def test_a_write_lock_held_past_the_timeout_is_503_with_retry_after_and_then_writes_resume(
        bundle_path: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    with server(bundle, CLIPSEARCH_WRITE_LOCK_TIMEOUT_S="0.3") as running:
        texts: dict[int, str] = {}
        with connected(running.url) as connection:
            status, _, answer = connection.add_text("before the lock", "before")
            texts[answer["ids"][0]] = "before the lock"  # type: ignore[index]
            with bundle_lock(bundle):  # as a compaction's swap, a sync or a rebuild in another process holds it
                started = time.monotonic()
                status, headers, answer = connection.add_text("waits for the lock", "locked")
                waited = time.monotonic() - started
                assert connection.search()
                info = httpx.get(f"{running.url}/info").json()["writes"]
            assert status == 503 and headers["retry-after"] == "1" and waited >= 0.3
            assert "for over 0.3 s; nothing was written; retry shortly" in str(answer["reason"])
            assert info["accepted"] is False and info["refused"] == "locked"
            status, _, answer = connection.add_text("waits for the lock", "locked")
            assert status == 200, answer
            texts[answer["ids"][0]] = "waits for the lock"  # type: ignore[index]
        assert httpx.get(f"{running.url}/info").json()["writes"]["accepted"] is True
        running.kill_9_and_restart()
        assert_all_there(running.url, texts, {})


def test_uploads_to_a_read_only_folder_get_503_while_texts_and_searches_go_on(
        bundle_path: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    with small_disk(bundle / "live-images", 4 * MiB) as folder, server(bundle) as running, \
            connected(running.url) as connection:
        uploads = {upload(running.url, 1).json()["ids"][0]: 1}
        folder.read_only()  # as a NAS share that went read-only under the service
        refused = upload(running.url, 2)
        assert refused.status_code == 503
        assert refused.json()["reason"].startswith(f"storing an uploaded image at {bundle / 'live-images'} was "
                                                   "refused: the filesystem is read-only; nothing of it was kept")
        assert httpx.get(f"{running.url}/info").json()["writes"]["refused"] == "unwritable"
        status, _, answer = connection.add_text("a text needs no upload folder", "fine")
        assert status == 200 and connection.search()
        texts = {answer["ids"][0]: "a text needs no upload folder"}  # type: ignore[index]
        folder.writable()
        uploads[upload(running.url, 2).json()["ids"][0]] = 2
        assert httpx.get(f"{running.url}/info").json()["writes"]["accepted"] is True
        running.kill_9_and_restart()
        assert_all_there(running.url, texts, uploads)


def test_a_bundle_on_a_read_only_filesystem_is_served_with_its_live_changes_and_takes_writes_once_it_can(
        bundle_path: Path, tmp_path: Path, encoder: ClipEncoder) -> None:
    with small_disk(tmp_path / "share", 16 * MiB) as share:
        bundle = Path(shutil.copytree(bundle_path, share.path / "bundle"))
        with opened_service(encoder, bundle) as service:
            [earlier] = CollectionWriter(service).add_texts([TextEntry("written before the share went read-only")])
        texts = {earlier: "written before the share went read-only"}
        share.read_only()
        with server(bundle, CLIPSEARCH_RELOAD_POLL_S="0.1") as running:
            with connected(running.url) as connection:
                status, _, answer = connection.add_text("not yet", "later")
                assert status == 503
                reason = str(answer["reason"])
                assert f"its live log {bundle / 'live.sqlite'} cannot be opened for writing" in reason
                assert "the filesystem is read-only" in reason and "its live changes are served, read-only" in reason
                assert_all_there(running.url, texts, {})
                assert connection.search()
                writes = httpx.get(f"{running.url}/info").json()["writes"]
                assert writes["refused"] == "unwritable" and writes["disk"]["read_only"] is True
                share.writable()
                deadline = time.monotonic() + 30
                while not httpx.get(f"{running.url}/info").json()["writes"]["accepted"]:
                    assert time.monotonic() < deadline, "writes were not accepted once the filesystem was writable"
                    time.sleep(0.1)
                status, _, answer = connection.add_text("now", "later")
                assert status == 200, answer
                texts[answer["ids"][0]] = "now"  # type: ignore[index]
            running.kill_9_and_restart()
            assert_all_there(running.url, texts, {})

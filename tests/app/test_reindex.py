"""A served collection moved to another model, and back, while searches and writes go on: no request
fails, no acknowledged write is lost, and the server ends on the new model (then the old one)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.settings import Settings
from clipsearch.client import ClipSearchClient, NewText
from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL
from indexer.cli import main
from tests.support.serving import ADMIN, serve

OFFLINE = ["--device", "cpu", "--workers", "0", "--no-progress", "--backend", "torch"]


class Traffic:
    """Searches and writes, each in a loop of its own, until stopped; every failure is kept."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.errors: list[str] = []
        self.written: dict[int, str] = {}
        self.searches = 0
        self.threads = [threading.Thread(target=self._search), threading.Thread(target=self._write)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _search(self) -> None:
        with ClipSearchClient(self.url) as client:
            while not self.stop.is_set():
                try:
                    client.search_text("a photo", k=5)
                    self.searches += 1
                except Exception as error:  # every failure is what the test counts
                    self.errors.append(f"search: {error!r}")

    def _write(self) -> None:
        with ClipSearchClient(self.url, admin_key=ADMIN) as client:
            number = 0
            while not self.stop.is_set():
                text = f"note {number} written during the switch"
                try:
                    [item_id] = client.add_texts([NewText(text, key=f"note-{number}")])
                    self.written[item_id] = text
                except Exception as error:
                    self.errors.append(f"write: {error!r}")
                number += 1


def test_searches_and_writes_go_on_without_an_error_across_a_reindex_and_a_rollback(bundle_path: Path,
                                                                                     tmp_path: Path) -> None:
    path = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    settings = Settings(bundle_path=path, device="cpu", backend="torch", admin_key=ADMIN,  # type: ignore[call-arg]
                        reload_poll_s=0.1)
    with serve(settings) as url, ClipSearchClient(url) as client:
        with Traffic(url) as traffic:
            wait_for(lambda: traffic.searches > 5 and len(traffic.written) > 5)
            assert main(["reindex", "--bundle", str(path), "--model", MULTILINGUAL_OFFLINE_MODEL, *OFFLINE]) == 0
            wait_for(lambda: client.info()["model"] == MULTILINGUAL_OFFLINE_MODEL)
            searches, writes = traffic.searches, len(traffic.written)
            wait_for(lambda: traffic.searches > searches + 5 and len(traffic.written) > writes + 5)  # the new model's
        assert traffic.errors == []
        assert {item_id: client.item(item_id)["text"] for item_id in traffic.written} == traffic.written
        assert client.info()["counts"]["text"] == 25 + len(traffic.written)
        # Back: refused while it would drop the writes made since the switch, unless told to.
        assert main(["rollback", "--bundle", str(path)]) == 2 and client.info()["model"] == MULTILINGUAL_OFFLINE_MODEL
        assert main(["rollback", "--bundle", str(path), "--discard-live-changes"]) == 0
        wait_for(lambda: client.info()["model"] == "tiny")
        assert client.search_text("a photo", k=3).ids
        # And forward again: the reindexed bundle, every write with it.
        assert main(["rollback", "--bundle", str(path)]) == 0
        wait_for(lambda: client.info()["model"] == MULTILINGUAL_OFFLINE_MODEL)
        assert {item_id: client.item(item_id)["text"] for item_id in traffic.written} == traffic.written


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)

"""A served collection is compacted under the running server: in the background once due, or by
`indexer compact`. Every worker then serves the new bundle, with the same ids, and a write that
meets the swap runs again on the new bundle."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from clipsearch.client import ClipSearchClient, NewText
from clipsearch.store.compaction import compact
from clipsearch.store.live import count_live_changes
from clipsearch.store.manifest import read_manifest
from tests.support.serving import ADMIN, LIMITS, on_every_worker, serve, start_server_process


@pytest.fixture()
def live_bundle(bundle_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_path, tmp_path / "bundle"))


def wait_for(condition: object, what: str, timeout_s: float = 60.0) -> float:
    """Seconds until `condition()` held; fails naming `what` after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_once_due_a_background_compaction_folds_the_writes_in_and_the_server_serves_the_result(
        live_bundle: Path) -> None:
    settings = Settings(bundle_path=live_bundle, device="cpu", admin_key=ADMIN, compact_min_changes=4,  # type: ignore[arg-type]
                        compact_fraction=0.01, reload_poll_s=0.1, **LIMITS)
    with serve(settings) as url, ClipSearchClient(url, admin_key=ADMIN) as client:
        before = client.info()
        giraffe, zebra, okapi = client.add_texts([NewText("a purple giraffe", "giraffe"), NewText("a zebra", "zebra"),
                                                  NewText("an okapi", "okapi")])
        assert client.info()["live_changes"] == 3  # not due yet: 3 < 4
        deleted = client.search_text("a photo", k=1).ids[0]
        client.delete([deleted])  # the fourth change: due

        wait_for(lambda: client.info()["compactions"], "the server serving the compacted bundle")
        info = client.info()
        assert info["live_changes"] == 0 and count_live_changes(live_bundle) == 0
        assert info["compactions"][0]["folded"] == 4
        assert info["counts"] == {"image": before["counts"]["image"] - 1, "text": before["counts"]["text"] + 3}
        assert client.search_text("a purple giraffe", target="text", k=1).ids == [giraffe]  # same ids
        assert client.item(okapi)["text"] == "an okapi" and deleted not in client.search_text("a photo", k=50).ids
        [again] = client.add_texts([NewText("a striped zebra", "zebra")])  # keys still name their items
        assert again == zebra and client.item(zebra)["text"] == "a striped zebra"


def test_a_write_that_meets_a_bundle_compacted_under_it_runs_again_on_the_new_one(live_bundle: Path) -> None:
    # The worker does not look for a new bundle on its own here: the write finds it.
    settings = Settings(bundle_path=live_bundle, device="cpu", admin_key=ADMIN, auto_compact=False,  # type: ignore[arg-type]
                        reload_poll_s=3600, **LIMITS)
    with serve(settings) as url, ClipSearchClient(url, admin_key=ADMIN) as client:
        [giraffe] = client.add_texts([NewText("a purple giraffe", "giraffe")])
        summary = compact(live_bundle)
        assert summary is not None and summary.folded == 1
        [zebra] = client.add_texts([NewText("a zebra", "zebra")])
        assert client.info()["compactions"][0]["folded"] == 1 and client.info()["live_changes"] == 1
        assert client.search_text("a purple giraffe", target="text", k=1).ids == [giraffe]
        assert client.search_text("a zebra", target="text", k=1).ids == [zebra]


def test_after_indexer_compact_every_worker_serves_the_new_bundle_and_sees_new_writes(live_bundle: Path) -> None:
    process, url = start_server_process(live_bundle, CLIPSEARCH_SERVER_WORKERS="2", CLIPSEARCH_RELOAD_POLL_S="0.2")
    try:
        with ClipSearchClient(url, admin_key=ADMIN) as writer:
            ids = writer.add_texts([NewText(f"a purple giraffe number {number}") for number in range(3)])
        run = subprocess.run([sys.executable, "-m", "indexer", "compact", "--bundle", str(live_bundle)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "folded 3 changes" in run.stdout
        assert read_manifest(live_bundle).compactions

        def every_worker_reloaded() -> bool:
            reloaded: list[bool] = []
            on_every_worker(url, 2, lambda fresh: reloaded.append(bool(fresh.get("/info").json()["compactions"])),
                            times=4)
            return all(reloaded)

        print(f"every worker served the compacted bundle after {wait_for(every_worker_reloaded, 'reload'):.2f} s")
        with ClipSearchClient(url, admin_key=ADMIN) as writer:
            [late] = writer.add_texts([NewText("a purple okapi", "okapi")])

        def sees_the_new_write(fresh: httpx.Client) -> None:
            found = fresh.post("/search/text", json={"text": "a purple okapi", "target": "text", "k": 1}).json()
            assert found["results"][0]["id"] == late
            assert fresh.get(f"/items/{ids[1]}").json()["text"] == "a purple giraffe number 1"

        on_every_worker(url, 2, sees_the_new_write)
    finally:
        process.kill()
        process.wait()

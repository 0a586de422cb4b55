"""kill -9 the indexer at random points of its work: every rerun ends with the uninterrupted
bundle, and a bundle that is visible at any moment is always complete."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from clipsearch.ingest.build import build
from clipsearch.ingest.shards import work_dir_for
from clipsearch.store.bundle import load_bundle
from clipsearch.store.manifest import MANIFEST_FILE
from indexer.cli import main
from tests.support.corpora import make_image_corpus, make_text_corpus, tiny_config
from tests.support.reference import bundle_contents

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 30 + 20  # 120 images and 80 texts, 4 items a shard


def shards_written(out: Path) -> int:
    if not work_dir_for(out).exists():
        return 0
    return len(list((work_dir_for(out) / "shards").glob("*.npz")))


def writing_the_bundle(out: Path) -> bool:
    return any(path.name.startswith(f".{out.name}.staging-") for path in out.parent.iterdir())


def test_random_kills_then_a_rerun_give_the_uninterrupted_bundle(tmp_path: Path) -> None:
    images = make_image_corpus(tmp_path / "images", 120, seed=5)
    texts = make_text_corpus(tmp_path / "texts.txt", 80)
    build(tiny_config(tmp_path / "reference", images=images, texts=texts, batch_size=4, batches_per_shard=1))
    out = tmp_path / "bundle"
    arguments = ["build", "--images", str(images), "--texts", str(texts), "--out", str(out), "--model", "tiny",
                 "--device", "cpu", "--batch-size", "4", "--batches-per-shard", "1", "--workers", "0",
                 "--no-progress"]
    points = random.Random(11)
    killed_at = []
    for _ in range(5):
        # A shard count this run has still to reach, or SHARDS + 1: while the bundle itself is written.
        target = points.randint(shards_written(out) + 1, SHARDS + 1)
        process = subprocess.Popen([sys.executable, "-m", "indexer", *arguments], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if (shards_written(out) >= target if target <= SHARDS else writing_the_bundle(out)):
                break
            time.sleep(0.002)
        process.kill()
        killed_at.append((target, process.wait(), shards_written(out)))
        if (out / MANIFEST_FILE).exists():
            load_bundle(out).close()  # whatever is visible must pass every checksum
    print("kill points (target, exit code, shards on disk):", killed_at)
    assert sum(code == -9 for _, code, _ in killed_at) >= 3, killed_at
    assert main(arguments) == 0
    assert bundle_contents(load_bundle(out)) == bundle_contents(load_bundle(tmp_path / "reference"))
    assert not work_dir_for(out).exists()
    # Only the lock that serialises changes to the bundle stays beside it (clipsearch.store.manifest.bundle_lock).
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".bundle")] in ([], [".bundle.lock"])

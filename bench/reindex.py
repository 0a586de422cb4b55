"""Reindexing a collection with another model while it is written to: how fast, against a build of the
same corpus in the same run, how long writes wait, and whether any is lost.

    python -m bench.reindex --images 500 --texts 2000 --writes-per-s 20

Writes --images synthetic photos and --texts texts, builds them with --model-from (the baseline:
items embedded per second by a build), then reindexes the bundle with --model-to
(clipsearch.ingest.reindex) while a client writes one text at a time, --writes-per-s times a second,
as a server's worker does: through the live log with the model the bundle has, and again with the
new model when the swap refuses a write (the bundle was replaced). Reports the reindex's items per
second and its ratio to the build's, how long writes were held (the bundle's lock, from the last
catch-up to the swap), the client's write latency during the reindex against the same writes
before it, and how many acknowledged writes the new bundle holds (all of them, or the bench fails).
The offline tiny models are the default, so it runs anywhere; name real ones to measure them.
Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import WORDS, emit, latency_summary, ratio, synthetic_photo
from clipsearch.config import MULTILINGUAL_OFFLINE_MODEL, OFFLINE_MODEL
from clipsearch.errors import BundleReplaced
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.reindex import reindex
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.search.open import opened_service
from clipsearch.search.writes import CollectionWriter, TextEntry
from clipsearch.store.manifest import read_manifest

QUIET_WRITES = 40
"""Writes timed before the reindex: the baseline latency."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="synthetic photos in the corpus")
    parser.add_argument("--texts", type=int, default=2000, help="texts in the corpus")
    parser.add_argument("--model-from", default=OFFLINE_MODEL, help="the model the bundle is built with")
    parser.add_argument("--pretrained-from", default=None, help="its pretrained tag")
    parser.add_argument("--model-to", default=MULTILINGUAL_OFFLINE_MODEL, help="the model it is reindexed with")
    parser.add_argument("--pretrained-to", default=None, help="its pretrained tag")
    parser.add_argument("--writes-per-s", type=float, default=20.0, help="the client's writes per second")
    parser.add_argument("--batch-size", type=int, default=64, help="items embedded per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="image decoding worker processes")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    return parser.parse_args(argv)


class Writer:
    """One text written at a time, at a steady rate, through the live log, as a server's worker writes:
    with the bundle's model, and with the new one once a write finds the bundle replaced."""

    def __init__(self, path: Path, encoders: dict[str, ClipEncoder], per_s: float) -> None:
        self.path, self.encoders, self.interval = path, encoders, 1.0 / per_s
        self.latencies: list[float] = []
        self.written: dict[int, str] = {}
        self.number = 0

    def run(self, stop: threading.Event, count: int | None = None) -> None:
        refused_at: float | None = None
        """When the write the swap refused began: its second try counts from there."""
        while self._going(stop, count):
            encoder = self.encoders[read_manifest(self.path).model.name]
            with opened_service(encoder, self.path) as service:
                writer = CollectionWriter(service)
                while self._going(stop, count):
                    text = f"note {self.number}: {WORDS[self.number % len(WORDS)]}"
                    began = time.perf_counter() if refused_at is None else refused_at
                    try:
                        [item_id] = writer.add_texts([TextEntry(text, key=f"note-{self.number}")])
                    except BundleReplaced:  # swapped: written again on the new bundle
                        refused_at = began
                        break
                    refused_at = None
                    self.latencies.append(time.perf_counter() - began)
                    self.written[item_id] = text
                    self.number += 1
                    time.sleep(max(0.0, self.interval - (time.perf_counter() - began)))

    def _going(self, stop: threading.Event, count: int | None) -> bool:
        return not stop.is_set() and (count is None or len(self.latencies) < count)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-reindex-") as folder:
        root = Path(folder)
        (root / "images").mkdir()
        for number in range(args.images):
            (root / "images" / f"photo_{number:05d}.jpg").write_bytes(synthetic_photo(number, 320, 240))
        (root / "texts.txt").write_text("\n".join(
            f"{WORDS[number % len(WORDS)]} and {WORDS[(number * 7) % len(WORDS)]} {number}"
            for number in range(args.texts)) + "\n")
        path = root / "bundle"
        started = time.perf_counter()
        build(BuildConfig(out=path, images=root / "images", texts=root / "texts.txt", model=args.model_from,
                          pretrained=args.pretrained_from, device=args.device, backend="torch",
                          batch_size=args.batch_size, workers=args.workers, progress=False))
        build_s = time.perf_counter() - started
        items = args.images + args.texts
        emit("build", items=items, seconds=build_s, items_per_s=items / build_s, model=args.model_from)
        encoders = {args.model_from: load_encoder(args.model_from, args.pretrained_from, device=args.device),
                    args.model_to: load_encoder(args.model_to, args.pretrained_to, device=args.device)}
        writer = Writer(path, encoders, args.writes_per_s)
        writer.run(threading.Event(), QUIET_WRITES)
        quiet = latency_summary(writer.latencies)
        writer.latencies = []
        stop = threading.Event()
        thread = threading.Thread(target=writer.run, args=(stop,))
        thread.start()
        try:
            summary = reindex(path, encoders[args.model_to], batch_size=args.batch_size, workers=args.workers)
            time.sleep(1.0)  # writes go on, on the new bundle
        finally:
            stop.set()
            thread.join()
        reindexed = summary.counts.get("image", 0) + summary.counts.get("text", 0)
        emit("reindex", items=reindexed, embed_s=summary.embed_s, write_s=summary.commit_s,
             items_per_s=summary.items_per_s, vs_build=ratio(summary.items_per_s, items / build_s),
             carried=summary.carried, writes_held_ms=summary.writes_held_s * 1000, model=args.model_to)
        with opened_service(encoders[args.model_to], path) as service:
            state = service.collection.refresh()
            found = {**{item.id: item.text for item in service.bundle.items}, **{
                item_id: item.text for item_id, item in state.items.items()}}
            kept = sum(1 for item_id, text in writer.written.items()
                       if found.get(item_id) == text and not state.is_removed(item_id))
        during = latency_summary(writer.latencies)
        emit("writes during the reindex", writes=len(writer.latencies), writes_per_s=args.writes_per_s,
             quiet_p50_ms=quiet["p50_ms"], p50_ms=during["p50_ms"], p99_ms=during["p99_ms"],
             max_ms=max(writer.latencies, default=0.0) * 1000, p50_vs_quiet=ratio(during["p50_ms"], quiet["p50_ms"]),
             acknowledged=len(writer.written), kept=kept)
        if kept != len(writer.written):
            print(f"lost writes: {len(writer.written) - kept} of {len(writer.written)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

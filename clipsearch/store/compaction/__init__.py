"""Compaction: fold a live collection's changes (clipsearch.store.live) into a new base bundle, with
no embedding done again and every id kept.

Live items are scored exactly beside the base index on every search, and hidden base rows stay in
the base index, masked; both cost time as they grow. A compaction makes the base equal to the
collection as it is:

1. Prepare, while writes go on: read one snapshot of the log; for each modality take the base
   vectors not hidden (read back from the index, which stores them exactly) and the live ones;
   build the new index; gather the items; begin the new log with every new base item's key.
   - Exact (Flat) indices are rebuilt as they were.
   - IVF indices keep their trained quantizer and take the new rows without training, until the
     rows added since they were trained pass `retrain_fraction` of the rows they were trained
     with. Then they are trained again and the build's recall check (and nprobe tuning) is run
     again, with the other modality's vectors as cross-modal queries when there are any; the
     recall reached is recorded in the manifest as a build's is.
   - On-disk IVF-PQ indices (clipsearch.index.ondisk) go the same way, read from their fp16 store a
     block at a time and written on disk again (a new store and new lists) in a work directory
     beside the bundle, never whole in memory. Other indices of compressed vectors cannot give
     their vectors back: CannotCompact.
2. Catch up, then commit: the new log takes what was written after the snapshot, hidden over the
   new base where it replaced or deleted a base item (clipsearch.store.live.fold_since), in
   passes while writes go on, then once more holding the bundle's lock (writers wait only for
   that pass and the swap); the new bundle is swapped in whole (clipsearch.store.bundle.write_compacted).

When one is due is the policy's (clipsearch.config.CompactionPolicy: the server's settings read it
without loading this package). The new indices are `rebuild`'s; the steps are `run`'s.

A kill at any point leaves the old bundle with its log, or the new one with its own: nothing
acknowledged is lost (tests/store/test_compaction.py kills it). Servers see the new bundle by its
manifest and load it (app.state); until then they serve their snapshot of the old one.
Only one compaction of a bundle runs at a time (clipsearch.store.manifest.compaction_lock).
"""

from clipsearch.store.compaction.run import CATCH_UP_PASSES, Compaction, CompactionSummary, compact

__all__ = ["CATCH_UP_PASSES", "Compaction", "CompactionSummary", "compact"]

"""The bundle format, defined here and nowhere else.

A bundle is one directory holding everything a server needs:

    manifest.json   format version, model, dimension, metric, per-modality counts and index
                    descriptions, package versions, creation time, sha256 of every other file
                    (clipsearch.store.manifest)
    image.faiss     one FAISS index per modality present (IndexIDMap2, inner product)
    text.faiss
    image.ivfdata   for an on-disk IVF-PQ index only (clipsearch.index.ondisk): image.faiss is then a bare
    image.vectors.npy  IndexIVFPQ whose inverted lists (codes and item ids) are in image.ivfdata;
    image.ids.npy   every vector at half precision by ascending item id, and those ids, for the
                    exact re-rank of its candidates (and likewise for text)
    caption.faiss   with `--fuse` naming caption (ocr) only: the caption vectors of captioned image
    ocr.faiss       items (the vectors of the text read in them), by the image item's id
                    (IndexIDMap2 over a Flat index; clipsearch.index.fusion)
    fused.faiss     with `--fuse` and an approximate image index only: the same kind of index over
                    every image item's fused row [image | caption | ocr], by item id
    items.sqlite    one row per item: id, modality, uri, text (caption or text), extra JSON,
                    content hash; ids are the same int64 ids the indices return (clipsearch.store.items);
                    and the FTS5 keyword tables over captions, texts and the manifest's
                    `keyword_fields` (clipsearch.store.keywords)
    report.json     what the build skipped and why
    live.sqlite     changes made since the build or the last compaction (items added, replaced,
    live-images/    deleted), if the bundle was served with writes, and the files of images added
                    (clipsearch.store.live); not in the manifest, which describes the base. A compaction
                    (clipsearch.store.compaction) folds the changes into a new base, in a new bundle
                    written and swapped in as a build's is

A bundle is written in a staging directory beside its final path and renamed into place only
once complete (exchanged with the old one in one step where the system allows it), and the
manifest (written last) holds checksums of all other files, so nothing half-written ever loads.
Changes to a bundle in place (new item metadata, evaluation records) hold an exclusive lock on
`.NAME.lock` beside it (clipsearch.store.manifest.bundle_lock). A snapshot (bundle.snapshot) takes
its copy under the same lock, and archives it with a checksum per file.
"""

from clipsearch.store.bundle.layout import (
    FUSED_FILE,
    REPORT_FILE,
    FusedContent,
    ModalityContent,
    index_file_name,
    on_disk_file_names,
    on_disk_name,
    resident_bytes,
    text_part_file_name,
)
from clipsearch.store.bundle.load import Bundle, load_bundle
from clipsearch.store.bundle.swap import recover_interrupted_swaps
from clipsearch.store.bundle.write import rewrite_items, write_bundle, write_compacted

__all__ = ["FUSED_FILE", "REPORT_FILE", "Bundle", "FusedContent", "ModalityContent", "index_file_name",
           "load_bundle", "on_disk_file_names", "on_disk_name", "recover_interrupted_swaps", "resident_bytes",
           "rewrite_items",
           "text_part_file_name", "write_bundle", "write_compacted"]
